"""Evaluation: how good is the routing, replayed on stored outcomes (no model is called).

Reads queries, vectors and outcomes; re-calibrates and routes inside one transaction that is
rolled back, so the served store is unchanged. Replay, sweeps and the text / PNG report.
"""
