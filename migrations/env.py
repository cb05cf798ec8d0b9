"""Alembic environment. The library passes an open SQLAlchemy connection in
``config.attributes["connection"]`` so migrations and ``sql/`` share one transaction."""

from alembic import context
from sqlalchemy import create_engine, pool

VERSION_TABLE = "avengers_alembic_version"


def _run(connection) -> None:
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    # Run by hand: `alembic -c migrations/alembic.ini -x url=postgresql+psycopg://... upgrade head`
    from avengers_store.store.connections import resolve_url, sqlalchemy_url

    url = context.get_x_argument(as_dictionary=True).get("url") or sqlalchemy_url(resolve_url())
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.begin() as conn:
        _run(conn)
