"""Alembic migrations: tables, indexes and data changes, run once each and recorded.

Views, functions and procedures live in ``sql/`` and are re-applied after migrations.
"""
