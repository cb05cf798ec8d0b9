"""The store: where everything is kept, and how to reach it.

Reads the environment (``AVENGERS_DATABASE_URL``, ``AVENGERS_HOME``, ...), starts the embedded
PostgreSQL + pgvector when nothing else is configured, opens connections, and brings a database
to this library's schema (alembic migrations, then the ``sql/`` definitions). Writes nothing but
the schema itself.
"""
