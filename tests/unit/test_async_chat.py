"""AsyncChatClient over real HTTP: the same protocol as ChatClient (n, top-up, limits, retries,
errors), plus streamed and forwarded completions."""

from __future__ import annotations

import asyncio
import time

import pytest

from avengers_store.answering.async_chat import AsyncChatClient
from avengers_store.answering.chat import ChatClient, Deadline, Endpoint
from avengers_store.answering.sampling import StreamedCompletion
from avengers_store.answering.strategies import aanswer, answer
from avengers_store.errors import EndpointError

MESSAGES = [{"role": "user", "content": "Say hi"}]


def run(coro):
    return asyncio.run(coro)


def test_sample_n_top_up_and_learned_limit(scripted_server):
    scripted_server.answers("a", "x", "y", max_choices=2)
    scripted_server.script(
        "b",
        {"status": 400, "message": "Field 'n': Value must be between 1 <= value <= 3, but got 5"},
        {"texts": ["z"]},
    )

    async def go():
        async with AsyncChatClient(backoff=0.0) as chat:
            topped = await chat.sample(scripted_server.endpoint("a"), MESSAGES, 5)
            limited = await chat.sample(scripted_server.endpoint("b"), MESSAGES, 5)
            return topped, limited

    topped, limited = run(go())
    assert topped.texts == ("x", "y", "x", "y", "x") and topped.requests == 3
    assert len(limited.texts) == 5
    assert [r["body"]["n"] for r in scripted_server.requests_for("b")] == [5, 3, 2]


def test_retries_then_names_the_endpoint(scripted_server, closed_port_url):
    scripted_server.script("flaky", {"status": 503}, {"texts": ["ok"]})

    async def go():
        async with AsyncChatClient(max_retries=1, backoff=0.0) as chat:
            batch = await chat.sample(scripted_server.endpoint("flaky"), MESSAGES)
            with pytest.raises(EndpointError, match=r"'down'.*2 attempts.*connection failed"):
                await chat.sample(Endpoint("down", closed_port_url, "down"), MESSAGES)
            return batch

    batch = run(go())
    assert batch.texts == ("ok",) and batch.retries == 1


def test_timeout_is_marked(scripted_server):
    scripted_server.script("slow", {"delay": 1.0, "texts": ["late"]})

    async def go():
        async with AsyncChatClient(timeout=0.2, max_retries=0) as chat:
            await chat.sample(scripted_server.endpoint("slow"), MESSAGES)

    with pytest.raises(EndpointError, match="timed out") as caught:
        run(go())
    assert caught.value.timed_out


def test_stream_relays_events_and_forward_passes_the_body(scripted_server):
    scripted_server.answers("s", "one two three")

    async def go():
        async with AsyncChatClient() as chat:
            endpoint = scripted_server.endpoint("s", model="pool-name")
            async with chat.stream(
                endpoint,
                {"model": "x", "messages": MESSAGES, "stream_options": {"include_usage": True}},
            ) as events:
                got = [e async for e in events]
            forwarded = await chat.forward(
                endpoint, {"model": "x", "messages": MESSAGES, "seed": 3}
            )
            return got, forwarded.json()

    events, forwarded = run(go())
    text = "".join(
        c["delta"].get("content", "") for e in events for c in e["choices"] if "delta" in c
    )
    assert text == "one two three"
    assert events[-1]["usage"]["completion_tokens"] == 3
    bodies = [r["body"] for r in scripted_server.requests_for("s")]
    assert bodies[0]["stream"] is True and bodies[0]["model"] == "s"
    assert bodies[1]["seed"] == 3 and "stream" not in bodies[1]
    assert forwarded["choices"][0]["message"]["content"] == "one two three"


def test_sync_and_async_strategies_give_the_same_answer(scripted_server, closed_port_url):
    scripted_server.answers("m1", *[rf"\boxed{{{v}}}" for v in ("4", "4", "5", "3")])
    scripted_server.answers("m2", r"\boxed{4}")
    candidates = [
        Endpoint("down", closed_port_url, "down"),
        scripted_server.endpoint("m1"),
        scripted_server.endpoint("m2"),
    ]
    options = {"samples": 4, "strategy": "model-switch", "task_type": "math"}
    with ChatClient(max_retries=0) as chat:
        sync_answer = answer("What is 2+2?", candidates, client=chat, **options)

    async def go():
        async with AsyncChatClient(max_retries=0) as chat:
            return await aanswer("What is 2+2?", candidates, client=chat, **options)

    async_answer = run(go())
    for a in (sync_answer, async_answer):
        assert a.answer == "4" and a.models == ("m1", "m2")
        assert [f.model for f in a.fallbacks] == ["down"]
    assert dict(sync_answer.votes) == dict(async_answer.votes) == {"4": 6, "5": 1, "3": 1}


def test_an_attempt_is_bounded_as_a_whole_even_when_bytes_keep_coming(scripted_server):
    # Each piece comes within the read timeout; the attempt as a whole does not.
    scripted_server.script("drip", {"texts": ["slow"], "drip": 0.3})

    async def go():
        async with AsyncChatClient(timeout=1.0, max_retries=0) as chat:
            await chat.sample(scripted_server.endpoint("drip"), MESSAGES)

    started = time.perf_counter()
    with pytest.raises(EndpointError, match="timed out after 1 s") as caught:
        run(go())
    assert caught.value.timed_out and time.perf_counter() - started < 1.8


def test_a_stream_cut_before_done_or_past_its_deadline_is_an_error(scripted_server):
    scripted_server.script("cut", {"texts": ["one two three four"], "cut_after": 2})
    scripted_server.script("slow", {"texts": ["one two three four"], "chunk_delay": 0.4})

    async def drain(name, deadline=None):
        async with (
            AsyncChatClient() as chat,
            chat.stream(
                scripted_server.endpoint(name), {"messages": MESSAGES}, deadline=deadline
            ) as events,
        ):
            return [e async for e in events]

    with pytest.raises(EndpointError, match=r"closed the stream before its end"):
        run(drain("cut"))
    started = time.perf_counter()
    # (On a loaded machine the deadline may pass before the first word: named as such.)
    with pytest.raises(
        EndpointError, match="did not (finish the stream|send the answer's first token) in time"
    ) as late:
        run(drain("slow", Deadline.after(0.6)))
    assert late.value.timed_out and time.perf_counter() - started < 1.2


def test_the_first_token_has_its_own_bound_and_a_stream_is_put_back_together(scripted_server):
    call = {"name": "lookup", "arguments": {"q": "weather", "days": 2}}
    scripted_server.script("late", {"texts": ["one two"], "first_delay": 1.0})
    scripted_server.answers("tools", {"text": None, "tool_calls": [call]})
    scripted_server.answers("text", {"text": "cut off here", "finish_reason": "length"})

    async def drain(name, **bounds):
        async with (
            AsyncChatClient() as chat,
            chat.stream(
                scripted_server.endpoint(name),
                {"messages": MESSAGES, "logprobs": True, "stream_options": {"include_usage": True}},
                **bounds,
            ) as events,
        ):
            streamed = StreamedCompletion()
            async for event in events:
                streamed.add(event)
            return streamed

    started = time.perf_counter()
    with pytest.raises(EndpointError, match="did not send the answer's first token") as late:
        run(drain("late", first_token_by=Deadline.after(0.3), deadline=Deadline.after(5)))
    assert late.value.timed_out and time.perf_counter() - started < 0.9
    tools = run(drain("tools")).completion()
    assert tools.text == "" and tools.finish_reason == "tool_calls"
    assert tools.tool_calls == (
        {"id": "call_0_0", "type": "function",
         "function": {"name": "lookup", "arguments": '{"q": "weather", "days": 2}'}},
    )  # fmt: skip
    streamed = run(drain("text"))
    text = streamed.completion()
    assert (text.text, text.finish_reason) == ("cut off here", "length")
    assert [e["token"] for e in text.logprobs["content"]] == ["cut", " off", " here"]
    assert (streamed.tokens_in, streamed.tokens_out) == (10, 3)
    assert streamed.completion("error").finish_reason == "error"
