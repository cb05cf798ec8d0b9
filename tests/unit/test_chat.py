"""ChatClient against real sockets: the scripted server, a closed port and real SmolLM2."""

from __future__ import annotations

import time

import pytest

from avengers_store.answering.chat import ChatClient, Deadline, Endpoint
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
    # An endpoint error like any other (an ensemble falls back), and nothing was sent.
    with pytest.raises(EndpointError, match=r"\$AVENGERS_TEST_KEY, which is not set"):
        client.sample(endpoint, MESSAGES, 1)
    assert scripted_server.requests_for("a") == []
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


def test_a_deadline_bounds_retries_and_backoff(scripted_server):
    scripted_server.script("hung", {"hang": True})
    with ChatClient(timeout=30.0, max_retries=5, backoff=0.5) as chat:
        started = time.perf_counter()
        with pytest.raises(EndpointError, match=r"timed out after .* share of the 0.6 s") as info:
            chat.sample(scripted_server.endpoint("hung"), MESSAGES, 1, deadline=Deadline.after(0.6))
        elapsed = time.perf_counter() - started
    assert info.value.timed_out
    assert 0.5 < elapsed < 1.2  # the deadline, not 30 s per attempt x 6
    assert len(scripted_server.requests_for("hung")) == 1  # no time was left for a retry


def test_retry_after_is_honoured_when_short_and_fails_at_once_when_long(scripted_server):
    scripted_server.script("busy", {"status": 429, "retry_after": 0.3}, {"texts": ["ok"]})
    scripted_server.script("closed", {"status": 429, "retry_after": 3600})
    with ChatClient(max_retries=2, backoff=0.0) as chat:
        started = time.perf_counter()
        batch = chat.sample(scripted_server.endpoint("busy"), MESSAGES, 1)
        waited = time.perf_counter() - started
        started = time.perf_counter()
        with pytest.raises(EndpointError, match=r"HTTP 429.*retry after 3600 s: not waiting"):
            chat.sample(scripted_server.endpoint("closed"), MESSAGES, 1)
        gave_up = time.perf_counter() - started
    assert batch.texts == ("ok",) and batch.retries == 1 and waited >= 0.3
    assert len(scripted_server.requests_for("closed")) == 1 and gave_up < 0.5


def test_a_key_echoed_back_by_the_server_is_masked(scripted_server, monkeypatch):
    monkeypatch.setenv("AVENGERS_TEST_KEY", "sk-echo-me-not-123")
    scripted_server.script("a", {"status": 401, "echo_auth": True})
    endpoint = scripted_server.endpoint("a", api_key_env="AVENGERS_TEST_KEY")
    with ChatClient(max_retries=0) as chat, pytest.raises(EndpointError) as info:
        chat.sample(endpoint, MESSAGES, 1)
    assert scripted_server.requests_for("a")[0]["auth"] == "Bearer sk-echo-me-not-123"
    assert "HTTP 401" in str(info.value) and "Bearer ***" in str(info.value)
    assert "sk-echo-me-not-123" not in str(info.value)


def test_choices_that_came_before_the_deadline_are_kept(scripted_server):
    # Two choices per answer; the top-up for the rest hangs past the deadline.
    scripted_server.script("a", {"texts": ["x", "y"], "max_choices": 2}, {"hang": True})
    with ChatClient(max_retries=0) as chat:
        batch = chat.sample(
            scripted_server.endpoint("a"), MESSAGES, 5, deadline=Deadline.after(0.5)
        )
    assert batch.texts == ("x", "y") and batch.requests == 2


def test_an_attempt_is_bounded_as_a_whole_even_when_bytes_keep_coming(scripted_server):
    scripted_server.script("drip", {"texts": ["slow"], "drip": 0.3})  # 8 pieces, 2.4 s
    with ChatClient(timeout=1.0, max_retries=0) as chat:
        started = time.perf_counter()
        with pytest.raises(EndpointError, match="timed out after 1 s") as caught:
            chat.sample(scripted_server.endpoint("drip"), MESSAGES)
    assert caught.value.timed_out and time.perf_counter() - started < 1.5
