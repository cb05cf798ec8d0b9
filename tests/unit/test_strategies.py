"""Ensembling end to end over real HTTP: scripted answers where exact votes matter, SmolLM2 for
real sampling."""

from __future__ import annotations

import json
import time

import pytest

from avengers_store.answering.chat import ChatClient, Deadline, Endpoint
from avengers_store.answering.prompts import DEFAULT_PROMPTS, PromptSet, guess_task_type
from avengers_store.answering.strategies import answer, answer_many
from avengers_store.errors import (
    AllEndpointsFailed,
    ConfigurationError,
    EndpointError,
    InputError,
)


@pytest.fixture
def client():
    with ChatClient(timeout=5.0, max_retries=1, backoff=0.0) as chat:
        yield chat


def boxed(*values):
    return [rf"work... \boxed{{{v}}}" for v in values]


def test_self_consistency_votes_over_one_model(scripted_server, client):
    scripted_server.answers("m1", *boxed("42", "42", "41", "42", "1/2"))
    scripted_server.answers("m2", *boxed("0"))
    result = answer(
        "What is 7*6?",
        [scripted_server.endpoint("m1"), scripted_server.endpoint("m2")],
        samples=5,
        client=client,
    )
    assert result.answer == "42"
    assert dict(result.votes) == {"42": 3, "41": 1, "0.5": 1}
    assert result.share == pytest.approx(0.6)
    assert result.models == ("m1",)
    assert result.task_type == "math"
    assert result.text == r"work... \boxed{42}"
    assert [u.samples for u in result.usage] == [5]
    assert result.fallbacks == () and result.decision is None
    as_json = json.loads(json.dumps(result.to_dict(include_samples=True)))
    assert as_json["answer"] == "42" and as_json["usage"][0]["model"] == "m1"
    assert len(as_json["samples"]) == 5 and as_json["samples"][0]["value"] == "42"
    assert scripted_server.requests_for("m2") == []
    sent = scripted_server.requests_for("m1")[0]["body"]
    assert sent["n"] == 5 and sent["temperature"] == 0.7
    assert "\\boxed{}" in sent["messages"][-1]["content"]


def test_model_switch_stays_when_share_reaches_threshold(scripted_server, client):
    scripted_server.answers("m1", *boxed("7", "7", "7", "7", "8"))  # share 0.8
    scripted_server.answers("m2", *boxed("8"))
    result = answer(
        "What is 3+4?",
        [scripted_server.endpoint("m1"), scripted_server.endpoint("m2")],
        samples=5,
        strategy="model-switch",
        threshold=0.8,
        client=client,
    )
    assert result.models == ("m1",) and result.answer == "7" and result.share == 0.8
    assert scripted_server.requests_for("m2") == []


def test_model_switch_switches_when_share_below_threshold(scripted_server, client):
    scripted_server.answers("m1", *boxed("7", "7", "7", "8", "9"))  # share 0.6 < 0.8
    scripted_server.answers("m2", *boxed("8", "8", "8", "8", "8"))
    scripted_server.answers("m3", *boxed("7"))
    endpoints = [scripted_server.endpoint(m) for m in ("m1", "m2", "m3")]
    result = answer("What is 3+4?", endpoints, samples=5, strategy="model-switch", client=client)
    # after m2 the pool is 8 x6, 7 x3, 9 x1: share 0.6, still below 0.8, so m3 is asked too
    assert result.models == ("m1", "m2", "m3")
    assert result.answer == "7" and dict(result.votes) == {"7": 8, "8": 6, "9": 1}
    assert [u.samples for u in result.usage] == [5, 5, 5]
    assert [s.model for s in result.samples][:6] == ["m1"] * 5 + ["m2"]


def test_model_switch_stops_once_pooled_share_reaches_threshold(scripted_server, client):
    scripted_server.answers("m1", *boxed("7", "7", "7", "8"))  # 0.75 < 0.8
    scripted_server.answers("m2", *boxed("7"))  # pooled 7: 8 of 8... -> stop
    scripted_server.answers("m3", *boxed("1"))
    endpoints = [scripted_server.endpoint(m) for m in ("m1", "m2", "m3")]
    result = answer("q 1+1", endpoints, samples=4, strategy="model-switch", client=client)
    assert result.models == ("m1", "m2")
    assert result.share == pytest.approx(7 / 8)
    assert scripted_server.requests_for("m3") == []


def test_model_switch_tie_goes_to_first_model(scripted_server, client):
    scripted_server.answers("m1", *boxed("1", "1", "2", "3"))
    scripted_server.answers("m2", *boxed("2", "4", "5", "6"))
    endpoints = [scripted_server.endpoint("m1"), scripted_server.endpoint("m2")]
    result = answer("1+0", endpoints, samples=4, strategy="model-switch", client=client)
    assert dict(result.votes)["1"] == dict(result.votes)["2"] == 2
    assert result.answer == "1"


def test_unparseable_samples_do_not_vote(scripted_server, client):
    scripted_server.answers("m1", "I do not know", "no idea", r"\boxed{5}", "hmm")
    result = answer("2+3", [scripted_server.endpoint("m1")], samples=4, client=client)
    assert result.answer == "5" and result.share == 1.0 and result.valid == 1
    assert len(result.samples) == 4


def test_direct_is_one_greedy_sample(scripted_server, client):
    scripted_server.answers("m1", "Answer: C")
    result = answer(
        "Pick one.\nA. x\nB. y\nC. z",
        [scripted_server.endpoint("m1")],
        samples=10,
        strategy="direct",
        client=client,
    )
    assert result.answer == "C" and result.task_type == "multiple_choice"
    body = scripted_server.requests_for("m1")[0]["body"]
    assert body["n"] == 1 and body["temperature"] == 0.0


def test_top_up_through_the_ensemble(scripted_server, client):
    scripted_server.answers("m1", *boxed("9"), max_choices=3)
    result = answer("4+5", [scripted_server.endpoint("m1")], samples=10, client=client)
    assert len(result.samples) == 10 and result.votes == {"9": 10}
    assert result.usage[0].requests == 4


def test_endpoint_down_falls_back_to_next(scripted_server, closed_port_url, client):
    scripted_server.answers("m2", *boxed("42"))
    down = Endpoint("m1", closed_port_url, "m1")
    result = answer("7*6", [down, scripted_server.endpoint("m2")], samples=3, client=client)
    assert result.answer == "42" and result.models == ("m2",)
    (fallback,) = result.fallbacks
    assert fallback.model == "m1" and fallback.replaced_by == "m2"
    assert "connection failed" in fallback.error
    assert [(u.model, u.samples, u.errors) for u in result.usage] == [("m1", 0, 1), ("m2", 3, 0)]


def test_malformed_endpoint_falls_back_to_next(scripted_server, client):
    scripted_server.script("m1", {"raw": "<html>gateway</html>"})
    scripted_server.answers("m2", "Answer: B")
    result = answer(
        "q",
        [scripted_server.endpoint("m1"), scripted_server.endpoint("m2")],
        task_type="multiple_choice",
        samples=2,
        client=client,
    )
    assert result.answer == "B"
    assert "not JSON" in result.fallbacks[0].error


def test_all_down_lists_every_endpoint(scripted_server, closed_port_url, client):
    scripted_server.script("m2", {"status": 503})
    candidates = [Endpoint("m1", closed_port_url, "m1"), scripted_server.endpoint("m2")]
    with pytest.raises(AllEndpointsFailed) as info:
        answer("7*6", candidates, samples=2, strategy="model-switch", client=client)
    message = str(info.value)
    assert "all 2 candidate endpoint(s) failed" in message
    assert "[m1]" in message and "connection failed" in message
    assert "[m2]" in message and "HTTP 503" in message
    assert [f.model for f in info.value.failures] == ["m1", "m2"]
    assert isinstance(info.value, EndpointError)


def test_no_candidates_and_bad_options():
    with pytest.raises(AllEndpointsFailed, match="no candidate endpoints"):
        answer("q", [])
    with pytest.raises(ConfigurationError, match="strategy"):
        answer("q", [], strategy="vote-harder")
    with pytest.raises(ConfigurationError, match="threshold"):
        answer("q", [], threshold=1.5)


def test_prompt_override(scripted_server, client, tmp_path):
    path = tmp_path / "prompts.toml"
    path.write_text('[text]\nsystem = ""\nuser = "Q: {question}\\nA:"\n')
    scripted_server.answers("m1", "Answer: Paris")
    result = answer(
        "Capital of France?",
        [scripted_server.endpoint("m1")],
        task_type="text",
        samples=1,
        prompts=PromptSet.from_file(path),
        client=client,
    )
    assert result.answer == "paris"
    sent = scripted_server.requests_for("m1")[0]["body"]["messages"]
    assert sent == [{"role": "user", "content": "Q: Capital of France?\nA:"}]


def test_prompt_file_keeps_defaults_for_omitted_types_and_reads_json(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"math": {"user": "Solve: {question}"}}')
    prompts = PromptSet.from_file(path)
    assert prompts.math.user == "Solve: {question}"
    assert prompts.math.system == DEFAULT_PROMPTS.math.system
    assert prompts.code == DEFAULT_PROMPTS.code
    # braces in questions and templates are left alone
    assert prompts.messages("math", "f(x) = {x}")[-1]["content"] == "Solve: f(x) = {x}"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('[poem]\nuser = "{question}"\n', "unknown task type 'poem'"),
        ('[math]\nuser = "no placeholder"\n', r"\[math\].*must contain \{question\}"),
        ('[math]\nsytem = "typo"\n', "unknown key.*sytem"),
        ("[math\n", "not valid TOML"),
    ],
)
def test_prompt_file_errors_name_the_file(tmp_path, content, problem):
    path = tmp_path / "p.toml"
    path.write_text(content)
    with pytest.raises(InputError, match=problem) as info:
        PromptSet.from_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("question", "task_type"),
    [
        ("What is 7*6?", "math"),
        ("How many apples are left if I eat 3 of 5?", "math"),
        ("Which is a mammal?\nA. shark\nB. whale\nC. trout", "multiple_choice"),
        ("Write a Python function that reverses a list.", "code"),
        ("Who wrote Hamlet?", "text"),
    ],
)
def test_guess_task_type(question, task_type):
    assert guess_task_type(question) == task_type


def test_answer_many_in_order_with_failures(scripted_server, closed_port_url, client):
    scripted_server.answers("m1", *boxed("1"))
    good = [scripted_server.endpoint("m1")]
    bad = [Endpoint("m0", closed_port_url, "m0")]
    results = answer_many(
        ["1*1", "2*0+1", "3-2"], [good, bad, good], samples=2, client=client, return_exceptions=True
    )
    assert results[0].answer == "1" and results[2].answer == "1"
    assert isinstance(results[1], AllEndpointsFailed)


@pytest.mark.llm
def test_smol_self_consistency_real_samples(smol_server):
    with ChatClient(timeout=60.0) as chat:
        result = answer("What is 7*6?", [smol_server], samples=5, client=chat, max_tokens=64)
    assert len(result.samples) == 5 and result.usage[0].samples == 5
    assert sum(result.votes.values()) == result.valid <= 5
    assert 0.0 <= result.share <= 1.0
    assert result.tokens_in > 0 and result.tokens_out > 0
    assert result.models == (smol_server.model,)
    assert result.task_type == "math"
    if result.answer is not None:
        assert result.votes[result.answer] == max(result.votes.values())


def test_a_hung_first_endpoint_leaves_the_next_its_share_of_the_deadline(scripted_server):
    scripted_server.script("hung", {"hang": True})
    scripted_server.answers("m2", *boxed("42"))
    scripted_server.answers("m3", *boxed("0"))
    candidates = [scripted_server.endpoint(m) for m in ("hung", "m2", "m3")]
    with ChatClient(timeout=60.0, max_retries=2, backoff=0.0) as chat:
        started = time.perf_counter()
        result = answer("7*6", candidates, samples=3, client=chat, timeout=1.5)
        elapsed = time.perf_counter() - started
    assert result.answer == "42" and result.models == ("m2",)
    (fallback,) = result.fallbacks
    assert fallback.model == "hung" and fallback.replaced_by == "m2"
    assert "share of the 1.5 s deadline" in fallback.error
    assert 0.45 < result.usage[0].latency_ms / 1000 < 0.9  # a third of 1.5 s
    assert elapsed < 1.5


def test_past_the_deadline_model_switch_votes_on_what_it_has(scripted_server):
    scripted_server.answers("m1", *boxed("7", "7", "8"))  # share 0.67 < 0.8: would switch
    scripted_server.script("m2", {"hang": True})
    candidates = [scripted_server.endpoint("m1"), scripted_server.endpoint("m2")]
    with ChatClient(max_retries=0) as chat:
        result = answer(
            "3+4", candidates, samples=3, strategy="model-switch", client=chat, timeout=0.8
        )
    assert result.answer == "7" and result.models == ("m1",)
    assert [f.model for f in result.fallbacks] == ["m2"]


def test_nothing_by_the_deadline_names_what_was_tried_and_what_was_not(scripted_server):
    scripted_server.script("hung", {"hang": True})
    scripted_server.answers("m2", *boxed("42"))
    candidates = [scripted_server.endpoint("hung"), scripted_server.endpoint("m2")]
    with ChatClient(max_retries=0) as chat, pytest.raises(AllEndpointsFailed) as info:
        # The deadline has passed before the first model is asked: nothing is sent.
        answer("7*6", candidates, client=chat, deadline=Deadline(time.monotonic() - 1, 2.0))
    assert info.value.timed_out
    assert str(info.value) == "no answer within the 2 s deadline: not asked: hung, m2"
    assert scripted_server.requests == []
    with ChatClient(max_retries=0) as chat, pytest.raises(AllEndpointsFailed) as info:
        answer("7*6", candidates[:1], client=chat, timeout=0.3)
    assert info.value.timed_out and "[hung]" in str(info.value)
    assert str(info.value).startswith("no answer within the 0.3 s deadline; 1 candidate")


def test_a_missing_api_key_falls_back_to_the_next_model(scripted_server, monkeypatch):
    monkeypatch.delenv("AVENGERS_UNSET_KEY", raising=False)
    scripted_server.answers("m1", *boxed("1"))
    scripted_server.answers("m2", *boxed("42"))
    keyed = scripted_server.endpoint("m1", api_key_env="AVENGERS_UNSET_KEY")
    with ChatClient(max_retries=0) as chat:
        result = answer("7*6", [keyed, scripted_server.endpoint("m2")], samples=2, client=chat)
    assert result.answer == "42" and result.models == ("m2",)
    assert "$AVENGERS_UNSET_KEY, which is not set" in result.fallbacks[0].error
    assert scripted_server.requests_for("m1") == []


# -- structured answers, finish reasons, usage, temperature -----------------------------------

WEATHER = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}


def test_tool_calls_vote_by_name_and_canonical_arguments(scripted_server, client):
    same_call_other_order = {"name": "get_weather", "arguments": {"unit": "c", "city": "Paris"}}
    scripted_server.answers(
        "m1",
        {"tool_calls": [WEATHER]},
        {"text": r"\boxed{4}"},
        {"tool_calls": [same_call_other_order]},
    )
    result = answer(
        "Weather in Paris?", [scripted_server.endpoint("m1")], samples=3, client=client,
        extra={"tools": [{"type": "function", "function": {"name": "get_weather"}}]},
    )  # fmt: skip
    assert result.answer == 'get_weather({"city":"Paris","unit":"c"})'
    assert result.votes[result.answer] == 2 and result.share == pytest.approx(2 / 3)
    assert result.finish_reason == "tool_calls" and result.chosen == 0
    assert result.tool_calls[0]["id"] == "call_0_0"
    assert json.loads(result.tool_calls[0]["function"]["arguments"]) == WEATHER["arguments"]
    sent = scripted_server.requests_for("m1")[0]["body"]
    assert sent["tools"][0]["function"]["name"] == "get_weather"


def test_a_kind_is_voted_first_then_the_answer_within_it(scripted_server, client):
    # Three text answers that all differ beat two identical tool calls: text is the kind most
    # samples gave, so the winner is its earliest answer, though the tool call has 2 votes.
    scripted_server.answers(
        "m1",
        {"tool_calls": [WEATHER]},
        r"\boxed{1}",
        {"tool_calls": [WEATHER]},
        r"\boxed{2}",
        r"\boxed{3}",
    )
    result = answer(
        "What is x?", [scripted_server.endpoint("m1")], samples=5, task_type="math", client=client
    )
    assert result.answer == "1" and result.votes == {
        'get_weather({"city":"Paris","unit":"c"})': 2,
        "1": 1,
        "2": 1,
        "3": 1,
    }
    assert result.tool_calls == () and result.finish_reason == "stop"


def test_json_answers_vote_canonically_and_only_valid_ones_against_a_schema(
    scripted_server, client
):
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string"}},
        "required": ["capital"],
    }
    scripted_server.answers(
        "m1",
        '{"capital": "Rome"}',  # valid, but outvoted
        '{ "capital" : "Paris" }',
        '{"city": "Paris"}',  # not valid against the schema: no vote
        '```json\n{"capital":"Paris"}\n```',
        "Paris",  # not JSON: no vote
    )
    fmt = {"type": "json_schema", "json_schema": {"name": "capital", "schema": schema}}
    result = answer(
        "Capital of France?", [scripted_server.endpoint("m1")], samples=5, client=client,
        extra={"response_format": fmt},
    )  # fmt: skip
    assert result.answer == '{"capital":"Paris"}' and result.valid == 3
    assert result.votes == {'{"capital":"Paris"}': 2, '{"capital":"Rome"}': 1}
    assert result.text == '{ "capital" : "Paris" }'  # the winner's first sample, as it was sent
    loose = answer(
        "Capital of France?", [scripted_server.endpoint("m1")], samples=5, client=client,
        extra={"response_format": {"type": "json_object"}},
    )  # fmt: skip
    assert loose.valid == 4  # without a schema, any JSON votes


def test_a_bad_json_schema_is_refused_before_any_call(scripted_server, client):
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}
    with pytest.raises(InputError) as caught:
        answer(
            "Q?", [scripted_server.endpoint("m1")], client=client, extra={"response_format": fmt}
        )
    assert caught.value.location == "response_format.json_schema.schema"
    assert scripted_server.requests == []


def test_finish_reason_is_the_returned_samples_even_without_a_winner(scripted_server, client):
    scripted_server.answers("m1", {"text": "The answer is", "finish_reason": "length"})
    result = answer("What is 7*6?", [scripted_server.endpoint("m1")], samples=1, client=client)
    assert result.answer is None and result.finish_reason == "length"
    assert result.returned.raw == "The answer is" and result.model == "m1"


def test_a_single_sample_sends_no_temperature_several_send_the_default(scripted_server, client):
    scripted_server.answers("m1", *boxed("1"))
    endpoints = [scripted_server.endpoint("m1")]
    answer("Q?", endpoints, samples=1, client=client)
    answer("Q?", endpoints, samples=3, client=client)
    answer("Q?", endpoints, samples=1, temperature=0.2, client=client)
    answer("Q?", endpoints, samples=2, strategy="model-switch", client=client)
    sent = [r["body"] for r in scripted_server.requests_for("m1")]
    assert "temperature" not in sent[0]
    assert sent[1]["temperature"] == 0.7 and sent[2]["temperature"] == 0.2
    assert sent[3]["temperature"] == 0.7


def test_usage_counts_every_choice_when_the_server_reports_one(scripted_server, client):
    scripted_server.script("one", {"texts": boxed("1"), "usage_as_one": True})
    scripted_server.answers("summed", *boxed("1"))
    as_one = answer("Q?", [scripted_server.endpoint("one")], samples=3, client=client)
    summed = answer("Q?", [scripted_server.endpoint("summed")], samples=3, client=client)
    # llama.cpp's report (with its timings) is one choice's: counted once per choice.
    assert (as_one.tokens_in, as_one.tokens_out) == (30, 15)
    assert (summed.tokens_in, summed.tokens_out) == (10, 15)


def test_logprobs_of_the_returned_sample(scripted_server, client):
    scripted_server.answers("m1", r"so \boxed{4}", r"so \boxed{5}", r"so \boxed{5}")
    result = answer(
        "Q?", [scripted_server.endpoint("m1")], samples=3, task_type="math", client=client,
        extra={"logprobs": True, "top_logprobs": 1},
    )  # fmt: skip
    assert result.answer == "5" and result.chosen == 1
    tokens = [entry["token"] for entry in result.logprobs["content"]]
    assert "".join(tokens) == r"so \boxed{5}"
