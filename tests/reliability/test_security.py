"""Nobody gets in: hostile strings through every CLI text option, names, route text and gateway
fields run nothing and fail cleanly; the analyst role reads but cannot write or see keys; a
planted database password and endpoint key appear in no log line, error text or table (a
``pg_dump`` of the schema and data is grepped)."""

from __future__ import annotations

import json
import logging
import subprocess
import uuid

import httpx
import psycopg
import pytest
from avengers_store.cli.main import cli
from click.testing import CliRunner
from psycopg import errors, sql
from psycopg.conninfo import make_conninfo

from avengers_store import AvengersClient
from avengers_store.errors import AvengersError
from avengers_store.gateway.settings import GatewaySettings
from avengers_store.gateway.testing import gateway_server
from avengers_store.store import analyst, connections
from avengers_store.testing import RANKED_MODELS, add_scripted_store, pg_bin, scripted_server

pytestmark = pytest.mark.timeout(180)

INJECTIONS = [
    "'; DROP TABLE avengers.models; --",
    '"); DROP TABLE avengers.outcomes; --',
    "x'); DELETE FROM avengers.route_log; --",
    "$$; DROP SCHEMA avengers CASCADE; $$",
    "$tag$ SELECT pg_sleep(10) $tag$",
    "1; SELECT pg_terminate_backend(pg_backend_pid())",
    "%s %(x)s {0} \\N \\.",
    "nul\x00byte",
    "ünïcødé ☃ 日本語 \u202e rtl",
    "q" * 20_000,
]
PLANTED_PASSWORD = f"PlantedDbPw{uuid.uuid4().hex[:8]}"
PLANTED_KEY = f"sk-planted-{uuid.uuid4().hex[:12]}"
KEY_ENV = "AVENGERS_SECURITY_PLANTED_KEY"


@pytest.fixture(scope="module")
def llm():
    with scripted_server() as server:
        for name in RANKED_MODELS:
            server.answers(name, r"\boxed{42}")
        yield server


@pytest.fixture(scope="module")
def store(db_url, llm) -> str:
    with connections.connect(db_url) as conn:
        add_scripted_store(conn, llm.base_url)
        conn.commit()
    return db_url


def objects(url: str) -> dict:
    """The schema's objects and every table's row count: what an injection would change."""
    with psycopg.connect(url) as c:
        rels = c.execute(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'avengers'::regnamespace"
        ).fetchone()[0]
        procs = c.execute(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'avengers'::regnamespace"
        ).fetchone()[0]
        counts = {
            t: c.execute(f"SELECT count(*) FROM avengers.{t}").fetchone()[0]
            for t in ("models", "datasets", "queries", "outcomes", "clusterings", "api_keys")
        }
    return {"relations": rels, "functions": procs, "counts": counts}


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


def clean(result) -> None:
    """Succeeded, or failed as a usage error or with one of the library's errors (which the
    ``avengers`` entry point prints as one line)."""
    if result.exit_code == 0:
        return
    assert result.exit_code in (1, 2), (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit | AvengersError), repr(result.exception)
    assert "Traceback" not in result.output


def test_injection_strings_through_cli_options_run_nothing(store, monkeypatch, tmp_path):
    monkeypatch.setenv("AVENGERS_DATABASE_URL", store)
    before = objects(store)
    for s in INJECTIONS:
        for args in (
            ("models", "add", s, "--endpoint", "http://127.0.0.1:9/v1", "--served-name", s),
            ("models", "add", "m", "--endpoint", s),
            ("models", "set", s, "--served-name", s),
            ("models", "set", "alpha", "--api-key-env", s),
            ("models", "remove", s, "--yes"),
            ("models", "deactivate", s),
            ("datasets", "remove", s, "--yes"),
            ("keys", "create", s),
            ("keys", "revoke", s),
            ("clusterings", "activate", s),
            ("route", s),
            ("route", "fine", "--method", s),
            ("ask", s, "--strategy", s),
            ("profile", "--model", s),
            ("db", "grant-analyst", s),
        ):
            clean(invoke(*args))
        path = tmp_path / "q.jsonl"
        path.write_text(json.dumps({"text": s}) + "\n")
        clean(invoke("datasets", "add", str(path), "--name", s))
    after = objects(store)
    assert after["relations"] == before["relations"]
    assert after["functions"] == before["functions"]
    # Names are data: a hostile model or dataset name is stored as it is, or refused; no other
    # row changes.
    with psycopg.connect(store) as c:
        kept = c.execute("SELECT name FROM avengers.models ORDER BY id").fetchall()
        assert {"alpha", "bravo", "charlie"} <= {r[0] for r in kept}
        with c.cursor() as cur:  # a stored hostile name reads back exactly
            for (name,) in kept:
                cur.execute("SELECT count(*) FROM avengers.models WHERE name = %s", (name,))
                assert cur.fetchone()[0] == 1
        c.execute("DELETE FROM avengers.models WHERE name NOT IN ('alpha', 'bravo', 'charlie')")
        c.execute("DELETE FROM avengers.datasets WHERE id NOT IN (SELECT dataset_id FROM "
                  "avengers.queries)")  # fmt: skip
        c.execute("DELETE FROM avengers.api_keys")


def test_injection_strings_as_route_text_and_gateway_fields(store):
    before = objects(store)
    with AvengersClient(store) as client:
        for s in INJECTIONS:
            try:
                decision = client.route(s, 2)
                assert decision.candidates
            except AvengersError as exc:
                assert "nul" in str(exc).lower() or "NUL" in str(exc), exc
    with gateway_server(GatewaySettings(auth=False), database_url=store) as gw:
        url = gw.base_url + "/v1/chat/completions"
        for s in INJECTIONS:
            for body in (
                {"model": s, "messages": [{"role": "user", "content": "hi"}]},
                {"model": "avengers", "messages": [{"role": "user", "content": s}]},
                {"model": "avengers", "user": s, "messages": [{"role": s, "content": "hi"}]},
                {
                    "model": "avengers",
                    "strategy": s,
                    "messages": [{"role": "user", "content": "x"}],
                },
                {"model": "avengers", "task_type": s, "messages": [{"role": "user", "content": s}]},
            ):
                # A header can carry only printable ASCII (httpx refuses the rest itself).
                safe = s.isascii() and s.isprintable()
                headers = {"x-session-id": s[:200]} if safe else {}
                r = httpx.post(url, json=body, headers=headers, timeout=30)
                assert r.status_code in (200, 400, 404, 413, 422), (r.status_code, r.text)
                if r.status_code != 200:
                    assert set(r.json()["error"]) >= {"message", "type"}
    after = objects(store)
    assert after["relations"] == before["relations"] and after["functions"] == before["functions"]
    for table in ("models", "datasets", "queries", "outcomes", "clusterings", "api_keys"):
        assert after["counts"][table] == before["counts"][table]


@pytest.fixture
def analyst_role(pg_admin_url, store):
    name = f"analyst_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    analyst.grant_analyst(name, url=store)
    yield name
    with psycopg.connect(store, autocommit=True) as c:
        c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
    with psycopg.connect(pg_admin_url, autocommit=True) as c:
        c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_the_analyst_cannot_write_or_see_keys(store, analyst_role):
    with psycopg.connect(make_conninfo(store, user=analyst_role), autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM avengers.cluster_ranks").fetchone()[0] > 0
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied"):
            c.execute("INSERT INTO avengers.models (name) VALUES ('x')")
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied"):
            c.execute("SELECT key_hash FROM avengers.api_keys")


def test_no_planted_secret_in_logs_errors_or_a_dump(store, llm, monkeypatch, caplog, tmp_path):
    """A database password in AVENGERS_DATABASE_URL (every libpq form) and an endpoint key that
    a careless server echoes back: exercised through failures and debug logging, then looked for
    everywhere."""
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    params = psycopg.conninfo.conninfo_to_dict(store)
    socket_dir, dbname = params["host"], params["dbname"]
    with_password = [
        make_conninfo(store, password=PLANTED_PASSWORD),  # key=value
        f"postgresql://postgres:{PLANTED_PASSWORD}@/{dbname}?host={socket_dir}",
        f"postgresql:///{dbname}?host={socket_dir}&password={PLANTED_PASSWORD}",
        f"postgresql://postgres:{PLANTED_PASSWORD}@/no_such_db?host={socket_dir}",
        f"postgresql://postgres:{PLANTED_PASSWORD}@127.0.0.1:1/x?connect_timeout=1",
        f"host=/nonexistent password={PLANTED_PASSWORD} dbname=x",
        f"postgresql://postgres:{PLANTED_PASSWORD}@[bad",
    ]
    for url in with_password:
        monkeypatch.setenv("AVENGERS_DATABASE_URL", url)
        for args in (
            ("db", "status"),
            ("db", "url"),
            ("route", "hello"),
            ("-vv", "models", "list"),
        ):
            result = invoke(*args)
            texts += [result.output, repr(result.exception)]
        try:
            with AvengersClient(url) as client:
                client.route("hello", 1)
        except AvengersError as exc:
            texts.append(str(exc))
    monkeypatch.setenv("AVENGERS_DATABASE_URL", store)
    # The endpoint key: a server that quotes the Authorization header in its errors.
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    with psycopg.connect(store, autocommit=True) as c:
        c.execute("UPDATE avengers.models SET api_key_env = %s", (KEY_ENV,))
    for name in RANKED_MODELS:
        llm.script(name, {"status": 500, "echo_auth": True})
    try:
        with AvengersClient(store) as client:
            try:
                client.ask("What is 6 times 7?", samples=1, timeout=5)
            except AvengersError as exc:
                texts.append(str(exc))
        texts.append(invoke("-vv", "ask", "What is 6 times 7?", "--timeout", "5").output)
        credentialed = f"http://bob:{PLANTED_PASSWORD}@127.0.0.1:9/v1"
        texts.append(invoke("models", "add", "leaky", "--endpoint", credentialed).output)
        texts.append(invoke("models", "set", "alpha", "--endpoint", credentialed).output)
        with gateway_server(GatewaySettings(auth=False), database_url=store) as gw:
            r = httpx.post(
                gw.base_url + "/v1/chat/completions",
                json={"model": "avengers", "messages": [{"role": "user", "content": "6*7?"}]},
                timeout=30,
            )
            texts += [r.text, str(r.headers)]
            r = httpx.post(
                gw.base_url + "/v1/chat/completions",
                json={"model": "alpha", "messages": [{"role": "user", "content": "6*7?"}]},
                timeout=30,
            )
            texts += [r.text, str(r.headers)]
    finally:
        with psycopg.connect(store, autocommit=True) as c:
            c.execute("UPDATE avengers.models SET api_key_env = NULL")
        for name in RANKED_MODELS:
            llm.answers(name, r"\boxed{42}")
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(record.exc_info) for record in caplog.records if record.exc_info]
    # The key did reach the server (so the test could have found it)...
    assert any(PLANTED_KEY in str(r.get("auth")) for r in llm.requests)
    # ...and was echoed in its error bodies.
    dump = subprocess.run(
        [pg_bin("pg_dump"), "--dbname", store, "--schema", "avengers"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dump.returncode == 0, dump.stderr
    assert "route_log" in dump.stdout
    texts.append(dump.stdout)
    joined = "\n".join(texts)
    assert "Traceback" not in joined or PLANTED_PASSWORD not in joined
    assert PLANTED_PASSWORD not in joined
    assert PLANTED_KEY not in joined


# What a careless or hostile upstream echoes in a 200: a body that is not JSON (the key it was
# sent and a bearer token nobody configured), an answer's text (the key and an OpenAI-shaped key;
# streamed, each is one event of its own, as a server quoting them would send it).
STRANGER = f"stranger{uuid.uuid4().hex[:16]}"
ECHOES = {
    "not-json": {"raw": f"not json; key={PLANTED_KEY}; Authorization: Bearer {STRANGER}"},
    "answer": {"texts": [f"the key is {PLANTED_KEY} and sk-{STRANGER}"]},
}


@pytest.mark.parametrize("echo", list(ECHOES))
def test_a_key_echoed_in_a_200_reaches_no_caller_log_or_table(
    store, llm, monkeypatch, caplog, echo
):
    """Every path a 200 from an upstream takes (the sync client, the async client, `avengers
    ask`, the gateway routed and passed through, plain and streamed): the configured key and
    the stranger's token appear in no answer, error, log record or row of a pg_dump."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    with psycopg.connect(store, autocommit=True) as c:
        c.execute("UPDATE avengers.models SET api_key_env = %s", (KEY_ENV,))
    for name in RANKED_MODELS:
        llm.script(name, ECHOES[echo])
    texts: list[str] = []
    statuses: list[int] = []
    question = "What is 6 times 7?"
    try:
        with AvengersClient(store) as client:
            try:
                texts.append(repr(client.ask(question, samples=1, timeout=5)))
            except AvengersError as exc:
                texts.append(str(exc))
        texts.append(invoke("-vv", "ask", question, "--timeout", "5").output)
        with gateway_server(GatewaySettings(auth=False), database_url=store) as gw:
            for model in ("avengers", RANKED_MODELS[0]):
                for stream in (False, True):
                    r = httpx.post(
                        gw.base_url + "/v1/chat/completions",
                        json={
                            "model": model,
                            "stream": stream,
                            "messages": [{"role": "user", "content": question}],
                        },
                        timeout=30,
                    )
                    statuses.append(r.status_code)
                    texts += [r.text, str(r.headers)]
    finally:
        with psycopg.connect(store, autocommit=True) as c:
            c.execute("UPDATE avengers.models SET api_key_env = NULL")
        for name in RANKED_MODELS:
            llm.answers(name, r"\boxed{42}")
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(record.exc_info) for record in caplog.records if record.exc_info]
    dump = subprocess.run(
        [pg_bin("pg_dump"), "--dbname", store, "--schema", "avengers", "--data-only"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dump.returncode == 0, dump.stderr
    texts.append(dump.stdout)
    joined = "\n".join(texts)
    # The echo was sent and did reach the callers, masked (so the test could have found it).
    assert any(PLANTED_KEY in str(r.get("auth")) for r in llm.requests)
    assert "***" in joined
    assert PLANTED_KEY not in joined
    assert STRANGER not in joined
    if echo == "not-json":
        # Streams too: a model that sends no first token is an error before any header.
        assert statuses == [502, 502, 502, 502], statuses
    else:
        assert statuses == [200, 200, 200, 200], statuses
