"""Answering: from ranked candidate models to one voted answer.

Calls OpenAI-compatible chat endpoints (vLLM in production), fills prompts, extracts and grades
answers, votes (Self-Consistency, Model-Switch), and writes one ``route_log`` row per request.
"""
