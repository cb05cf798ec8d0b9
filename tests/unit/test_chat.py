"""ChatClient against real sockets: the scripted server, a closed port and real SmolLM2."""

from __future__ import annotations

import time

import pytest

from avengers_store.answering.chat import ChatClient, Endpoint
from avengers_store.errors import ConfigurationError, EndpointError

MESSAGES = [{"role": "user", "content": "What is 7*6?"}]


@pytest.fixture
def client():
    with ChatClient(timeout=5.0, max_retries=2, backoff=0.01) as chat:
        yield chat


def test_endpoint_url_forms():
    assert Endpoint("m", "http://h:8000/v1", "m").chat_url == "http://h:8000/v1/chat/completions"
    assert Endpoint("m", "http://h:8000/v1/", "m").chat_url == "http://h:8000/v1/chat/completions"
    assert Endpoint("m", "http://h:8000", "m").chat_url == "http://h:8000/v1/chat/completions"


def test_credentials_in_an_endpoint_url_are_never_shown(scripted_server, closed_port_url):
    closed = Endpoint("m", closed_port_url.replace("http://", "http://bob:hunter2@"), "m")
    assert "hunter2" not in closed.describe() and "bob" not in closed.describe()
    assert closed_port_url.split("//")[1] in closed.describe()
    scripted_server.script("a", {"status": 500}, {"status": 500})
    served = scripted_server.endpoint("a")
    failing = Endpoint("m", served.base_url.replace("http://", "http://bob:hunter2@"), "a")
    with ChatClient(timeout=5.0, max_retries=1, backoff=0.0) as chat:
        for endpoint in (closed, failing):
            with pytest.raises(EndpointError) as info:
                chat.sample(endpoint, MESSAGES, 1)
            assert "hunter2" not in str(info.value) and "bob" not in str(info.value)


def test_n_choices_in_one_request(scripted_server, client):
    scripted_server.answers("a", "one", "two", "three")
    batch = client.sample(scripted_server.endpoint("a"), MESSAGES, 3, temperature=0.5)
    assert batch.texts == ("one", "two", "three")
    assert batch.requests == 1
    assert batch.tokens_in == 10 and batch.tokens_out == 15
    body = scripted_server.requests_for("a")[0]["body"]
    assert body["n"] == 3 and body["temperature"] == 0.5 and body["messages"] == MESSAGES


def test_tops_up_when_server_returns_fewer_choices(scripted_server, client):
    scripted_server.answers("a", "x", max_choices=2)
    batch = client.sample(scripted_server.endpoint("a"), MESSAGES, 5)
    assert len(batch.texts) == 5
    assert [r["body"]["n"] for r in scripted_server.requests_for("a")] == [5, 3, 1]
    assert batch.requests == 3


def test_learns_n_limit_from_a_400(scripted_server, client):
    refusal = "Field 'n': Value must be between 1 <= value <= 4, but got 5"
    scripted_server.script("a", {"status": 400, "message": refusal}, {"texts": ["t"]})
    batch = client.sample(scripted_server.endpoint("a"), MESSAGES, 5)
    assert len(batch.texts) == 5
    assert [r["body"]["n"] for r in scripted_server.requests_for("a")] == [5, 4, 1]
    # remembered for the next call: no refused request this time
    client.sample(scripted_server.endpoint("a"), MESSAGES, 5)
    assert [r["body"]["n"] for r in scripted_server.requests_for("a")][3:] == [4, 1]


def test_retries_5xx_then_succeeds(scripted_server, client):
    scripted_server.script("a", {"status": 500}, {"status": 503}, {"texts": ["ok"]})
    batch = client.sample(scripted_server.endpoint("a"), MESSAGES, 1)
    assert batch.texts == ("ok",)
    assert batch.requests == 3 and batch.retries == 2


def test_5xx_after_all_retries_is_an_endpoint_error(scripted_server, client):
    scripted_server.script("a", {"status": 502, "message": "bad gateway"})
    with pytest.raises(EndpointError, match=r"'a'.*3 attempts.*HTTP 502.*bad gateway"):
        client.sample(scripted_server.endpoint("a"), MESSAGES, 1)
    assert len(scripted_server.requests_for("a")) == 3


def test_4xx_is_not_retried(scripted_server, client):
    with pytest.raises(EndpointError, match=r"HTTP 404.*does not exist.*served model name"):
        client.sample(scripted_server.endpoint("unknown"), MESSAGES, 1)
    assert len(scripted_server.requests_for("unknown")) == 1


def test_slow_endpoint_times_out(scripted_server):
    scripted_server.script("slow", {"delay": 1.0, "texts": ["late"]})
    with ChatClient(timeout=0.2, max_retries=1, backoff=0.0) as chat:
        started = time.perf_counter()
        with pytest.raises(EndpointError, match=r"'slow'.*2 attempts.*timed out after 0.2 s"):
            chat.sample(scripted_server.endpoint("slow"), MESSAGES, 1)
    assert time.perf_counter() - started < 1.5


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        ({"raw": "<html>oops</html>"}, "not JSON"),
        ({"json": {"object": "chat.completion"}}, "no 'choices' list"),
        ({"json": {"choices": []}}, "no 'choices' list"),
        ({"json": {"choices": [{"text": "completion-style"}]}}, r"choices\[0\] has no 'message'"),
        ({"json": {"choices": [{"message": {"content": 7}}]}}, "content is int"),
        ({"json": [1, 2]}, "expected a JSON object"),
    ],
)
def test_malformed_response_is_a_clear_error(scripted_server, client, step, problem):
    scripted_server.script("bad", step)
    with pytest.raises(
        EndpointError, match=rf"model 'bad' \(bad at http://127.0.0.1:\d+.*{problem}"
    ):
        client.sample(scripted_server.endpoint("bad"), MESSAGES, 1)
    assert len(scripted_server.requests_for("bad")) == 1  # malformed bodies are not retried


def test_closed_port_is_an_endpoint_error(closed_port_url, client):
    endpoint = Endpoint("down", closed_port_url, "down")
    with pytest.raises(EndpointError, match=r"'down'.*3 attempts.*connection failed"):
        client.sample(endpoint, MESSAGES, 1)


def test_api_key_from_environment(scripted_server, client, monkeypatch):
    scripted_server.answers("a", "ok")
    endpoint = scripted_server.endpoint("a", api_key_env="AVENGERS_TEST_KEY")
    monkeypatch.delenv("AVENGERS_TEST_KEY", raising=False)
    with pytest.raises(ConfigurationError, match=r"\$AVENGERS_TEST_KEY"):
        client.sample(endpoint, MESSAGES, 1)
    monkeypatch.setenv("AVENGERS_TEST_KEY", "sekret")
    client.sample(endpoint, MESSAGES, 1)
    assert scripted_server.requests_for("a")[-1]["auth"] == "Bearer sekret"


def test_sample_many_keeps_order_and_bounds_concurrency(scripted_server):
    scripted_server.script("a", {"delay": 0.2, "texts": ["x"]})
    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
    done = []
    with ChatClient(max_concurrency=3) as chat:
        started = time.perf_counter()
        batches = chat.sample_many(
            scripted_server.endpoint("a"), conversations, 2, on_done=lambda i, r: done.append(i)
        )
        elapsed = time.perf_counter() - started
    assert [len(b.texts) for b in batches] == [2] * 6
    assert sorted(done) == list(range(6))
    assert 0.35 < elapsed < 1.1  # two waves of three, not six in a row nor all at once
    contents = [r["body"]["messages"][0]["content"] for r in scripted_server.requests_for("a")]
    assert sorted(contents) == [f"q{i}" for i in range(6)]


def test_sample_many_return_exceptions(scripted_server, closed_port_url):
    with ChatClient(max_retries=0) as chat:
        results = chat.sample_many(
            Endpoint("down", closed_port_url, "down"), [MESSAGES, MESSAGES], return_exceptions=True
        )
        assert all(isinstance(r, EndpointError) for r in results)
        with pytest.raises(EndpointError):
            chat.sample_many(Endpoint("down", closed_port_url, "down"), [MESSAGES])


def test_settings_are_checked():
    with pytest.raises(ConfigurationError, match="max_concurrency"):
        ChatClient(max_concurrency=0)
    with pytest.raises(ConfigurationError, match="timeout"):
        ChatClient(timeout=0)


@pytest.mark.llm
def test_smol_real_sampling_with_n(smol_server):
    with ChatClient(timeout=60.0) as chat:
        batch = chat.sample(smol_server, MESSAGES, 4, max_tokens=48)
    assert len(batch.texts) == 4
    assert batch.requests == 1  # four choices in one request
    assert all(isinstance(t, str) for t in batch.texts)
    assert batch.tokens_in > 0 and batch.tokens_out > 0
