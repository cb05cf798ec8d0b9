"""Connection strings in messages: every password form is redacted, and the URL printed for psql
keeps everything but the password."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import conninfo

from avengers_store.errors import ConfigurationError, ConnectionFailed
from avengers_store.store import connections

SECRET = "hunter2-Zq9"

FORMS = [
    f"postgresql://bob:{SECRET}@db.example:5432/avengers",
    f"postgres://bob:{SECRET}@db.example/avengers?sslmode=require",
    f"postgresql://bob@db.example/avengers?password={SECRET}&sslmode=require",
    f"postgresql:///avengers?host=/run/pg&password={SECRET}",
    f"postgresql://bob:{SECRET}@h1:5432,h2:5433/avengers",
    f"host=db.example dbname=avengers user=bob password={SECRET}",
    f"host=db.example password='{SECRET} with space' dbname=avengers",
    f"host=db.example dbname=avengers sslpassword={SECRET}",
]


@pytest.mark.parametrize("url", FORMS)
def test_redact_hides_every_password_form(url):
    shown = connections.redact(url)
    assert SECRET not in shown
    assert connections.MASK in shown
    # Everything else still reads as the same connection.
    before = conninfo.conninfo_to_dict(url)
    after = conninfo.conninfo_to_dict(shown)
    for key in connections.SECRET_PARAMETERS & before.keys():
        assert after[key] == connections.MASK
    assert {k: v for k, v in after.items() if k not in connections.SECRET_PARAMETERS} == {
        k: v for k, v in before.items() if k not in connections.SECRET_PARAMETERS
    }


@pytest.mark.parametrize("url", FORMS)
def test_without_password_keeps_the_rest(url):
    stripped = connections.without_password(url)
    assert SECRET not in stripped
    assert connections.has_password(url) and not connections.has_password(stripped)
    before = conninfo.conninfo_to_dict(url)
    after = conninfo.conninfo_to_dict(stripped)
    assert after == {k: v for k, v in before.items() if k not in connections.SECRET_PARAMETERS}


def test_url_without_a_password_is_shown_unchanged():
    url = "postgresql://postgres:@/avengers?host=/run/avh/pgdata"
    assert connections.redact(url) == url
    assert connections.without_password(url) == url
    assert not connections.has_password(url)


def test_unparseable_string_is_never_shown():
    # libpq's own syntax error would quote the text after the space: part of the password.
    url = f"host=db.example password={SECRET[:4]} {SECRET[4:]}"
    assert SECRET[4:] not in connections.redact(url)
    assert connections.redact(url) == connections.UNPARSEABLE
    with pytest.raises(ConfigurationError) as info:
        connections.without_password(url)
    assert SECRET[4:] not in str(info.value)


def test_a_password_that_spells_another_part_is_not_shown():
    url = "postgresql://bob:db@db/avengers"
    assert connections.redact(url) == connections.UNPARSEABLE


def test_connect_error_on_a_bad_string_does_not_quote_it():
    url = f"host=127.0.0.1 password={SECRET[:4]} {SECRET[4:]}"
    with pytest.raises(ConnectionFailed) as info:
        connections.connect(url)
    assert SECRET[4:] not in str(info.value)
    assert info.value.__cause__ is None
    assert not isinstance(info.value.__context__, psycopg.Error) or info.value.__suppress_context__
