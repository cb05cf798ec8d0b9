"""What applications send today, through the gateway to a recording upstream on loopback (the
scripted server returns tool calls, JSON, logprobs and ``length`` on demand and keeps every body
it gets): each field arrives at the model or is refused naming it, for ``avengers`` and for a
pool model named directly; tool calls and JSON answers are voted; finish reasons and usage tell
the truth; and the same through the official ``openai`` SDK, including the Responses API."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from pydantic import BaseModel

from avengers_store.gateway.settings import GatewaySettings
from avengers_store.gateway.testing import gateway_server
from avengers_store.testing import ARITHMETIC, LITERATURE, log_rows, set_endpoints

SETTINGS = GatewaySettings(
    auth=False, policy={"method": "paper"}, upstream_retries=0, keepalive_s=0.2
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather of a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
PARIS = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}
ROME = {"name": "get_weather", "arguments": {"city": "Rome"}}
# Every OpenAI field a model honours, and one only vLLM knows: sent as the caller gave them.
PASSED = {
    "tools": TOOLS,
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "response_format": {"type": "json_object"},
    "logprobs": True,
    "top_logprobs": 2,
    "top_p": 0.9,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.25,
    "stop": ["\n\n"],
    "seed": 7,
    "user": "user-17",
    "top_k": 20,
}


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def rows_for(url: str, route_ids: list[str], timeout: float = 10.0) -> dict[str, tuple]:
    deadline = time.monotonic() + timeout
    while True:
        rows = log_rows(url, route_ids)
        if len(rows) == len(route_ids) or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


@pytest.fixture
def upstream(store, endpoints, scripted_server):
    """alpha (which arithmetic routes to) and bravo (literature) on the recording server."""
    set_endpoints(store, alpha=scripted_server.base_url, bravo=scripted_server.base_url)
    return scripted_server


def test_every_field_reaches_the_model_or_is_refused_naming_it(store, upstream):
    upstream.answers("alpha", '{"answer": 42}')
    upstream.answers("bravo", '{"author": "Shakespeare"}')
    extra = {"max_completion_tokens": 33, "metadata": {"team": "search"}}
    with gateway_server(SETTINGS, database_url=store) as gw:
        url = gw.base_url + "/v1/chat/completions"
        routed = httpx.post(url, json={"model": "avengers", "messages": user(ARITHMETIC),
                                       **PASSED, **extra})  # fmt: skip
        direct = httpx.post(url, json={"model": "bravo", "messages": user(LITERATURE),
                                       **PASSED, **extra})  # fmt: skip
        legacy = httpx.post(url, json={"model": "avengers", "messages": user(ARITHMETIC),
                                       "functions": [{"name": "f"}]})  # fmt: skip
        recipe_option = httpx.post(url, json={"model": "bravo", "messages": user(LITERATURE),
                                              "samples": 3})  # fmt: skip
        bad_tool = httpx.post(url, json={"model": "avengers", "messages": user(ARITHMETIC),
                                         "tools": [{"type": "retrieval"}]})  # fmt: skip
        bad_schema = httpx.post(url, json={
            "model": "avengers", "messages": user(ARITHMETIC),
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "x", "schema": {"type": 5}}},
        })  # fmt: skip
    assert routed.status_code == 200 and direct.status_code == 200, routed.text + direct.text
    (to_alpha,) = [r["body"] for r in upstream.requests_for("alpha")]
    (to_bravo,) = [r["body"] for r in upstream.requests_for("bravo")]
    for name, value in PASSED.items():
        assert to_alpha[name] == value, name
        assert to_bravo[name] == value, name
    # Routed: the token cap as max_tokens, no temperature invented for one sample, metadata
    # kept in the route log rather than sent.
    assert to_alpha["max_tokens"] == 33 and to_alpha["n"] == 1
    assert not {"temperature", "max_completion_tokens", "metadata", "samples"} & set(to_alpha)
    # Passed through: the body as it came.
    assert to_bravo["max_completion_tokens"] == 33 and to_bravo["metadata"] == {"team": "search"}
    route_id = routed.headers["x-avengers-route-id"]
    meta = rows_for(store, [route_id])[route_id][5]
    assert meta["request_metadata"] == {"team": "search"}
    assert (legacy.status_code, legacy.json()["error"]["param"]) == (400, "functions")
    assert (recipe_option.status_code, recipe_option.json()["error"]["param"]) == (400, "samples")
    assert bad_tool.status_code == 400 and bad_tool.json()["error"]["param"].startswith("tools")
    assert bad_schema.status_code == 400
    assert bad_schema.json()["error"]["param"] == "response_format.json_schema.schema"
    assert len(upstream.requests) == 2  # the refused requests reached no model


def test_tools_route_on_the_last_user_message_and_send_the_tool_history(store, upstream):
    upstream.answers("bravo", "Shakespeare wrote it; it is sunny in Paris.")
    history = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny"}'},
        {"role": "user", "content": LITERATURE},
    ]  # fmt: skip
    with gateway_server(SETTINGS, database_url=store) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused")
        raw = client.chat.completions.with_raw_response.create(
            model="avengers", messages=history, tools=TOOLS
        )
    assert raw.headers["x-avengers-cluster"] == "1"  # the literature question, not the weather
    (sent,) = [r["body"] for r in upstream.requests_for("bravo")]
    assert sent["messages"] == history and sent["tools"] == TOOLS


def test_a_voted_tool_call_its_finish_reason_and_usage_through_the_sdk(store, upstream):
    upstream.answers("alpha", {"tool_calls": [PARIS]}, {"tool_calls": [ROME]},
                     {"tool_calls": [{**PARIS, "arguments": {"unit": "c", "city": "Paris"}}]})  # fmt: skip
    with gateway_server(SETTINGS, database_url=store) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused")
        raw = client.chat.completions.with_raw_response.create(
            model="avengers", messages=user(ARITHMETIC), tools=TOOLS, tool_choice="required",
            extra_body={"samples": 3},
        )  # fmt: skip
        one = client.chat.completions.create(
            model="avengers", messages=user(ARITHMETIC), tools=TOOLS
        )
    completion = raw.parse()
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id == "call_0_0" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == PARIS["arguments"]
    assert raw.headers["x-avengers-vote-share"] == "0.6667"
    assert completion.avengers["votes"] == {
        'get_weather({"city":"Paris","unit":"c"})': 2,
        'get_weather({"city":"Rome"})': 1,
    }
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (10, 15)
    bodies = [r["body"] for r in upstream.requests_for("alpha")]
    assert bodies[0]["n"] == 3 and bodies[0]["temperature"] == 0.7  # several: the default
    assert "temperature" not in bodies[1]  # one sample: none invented
    assert one.choices[0].message.tool_calls[0].function.name == "get_weather"
    row = rows_for(store, [raw.headers["x-avengers-route-id"]])
    assert row[raw.headers["x-avengers-route-id"]][3] == 'get_weather({"city":"Paris","unit":"c"})'


class Capital(BaseModel):
    capital: str


def test_json_answers_voted_and_parsed_through_the_sdk(store, upstream):
    upstream.answers("bravo", '{"capital": "Paris"}', '{"capital": "Rome"}',
                     '{ "capital" : "Paris" }', "Paris, I think")  # fmt: skip
    with gateway_server(SETTINGS, database_url=store) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused")
        parsed = client.chat.completions.parse(
            model="avengers", messages=user(LITERATURE), response_format=Capital,
            extra_body={"samples": 4},
        )  # fmt: skip
    choice = parsed.choices[0]
    assert choice.message.parsed == Capital(capital="Paris")
    assert parsed.avengers["votes"] == {'{"capital":"Paris"}': 2, '{"capital":"Rome"}': 1}
    (sent,) = [r["body"] for r in upstream.requests_for("bravo")]
    schema = sent["response_format"]["json_schema"]
    assert sent["response_format"]["type"] == "json_schema" and schema["name"] == "Capital"
    assert schema["schema"]["required"] == ["capital"]


def test_finish_reason_length_and_logprobs_of_the_winner(store, upstream):
    upstream.answers("alpha", {"text": "The sum of seventeen and", "finish_reason": "length"})
    upstream.script("bravo", {"texts": ["It was written by", "Shakespeare wrote it"],
                              "usage_as_one": True})  # fmt: skip
    with gateway_server(SETTINGS, database_url=store) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused")
        cut = client.chat.completions.create(
            model="avengers", messages=user(ARITHMETIC), max_tokens=5,
            extra_body={"samples": 2, "task_type": "math"},
        )  # fmt: skip
        both = client.chat.completions.create(
            model="avengers", messages=user(LITERATURE), logprobs=True, top_logprobs=1,
            extra_body={"samples": 2},
        )  # fmt: skip
    # No sample held a number: the first is returned, and it was cut.
    assert cut.choices[0].finish_reason == "length"
    assert cut.choices[0].message.content == "The sum of seventeen and"
    assert (cut.usage.prompt_tokens, cut.usage.completion_tokens) == (10, 10)
    # A server reporting n choices as one (llama.cpp): counted per choice.
    assert (both.usage.prompt_tokens, both.usage.completion_tokens) == (20, 10)
    tokens = [t.token for t in both.choices[0].logprobs.content]
    assert "".join(tokens) == both.choices[0].message.content


def test_streams_relay_tool_call_deltas_for_one_sample_and_vote_for_several(store, upstream):
    upstream.answers("alpha", {"tool_calls": [PARIS]}, {"tool_calls": [PARIS]},
                     {"tool_calls": [ROME]})  # fmt: skip
    with gateway_server(SETTINGS, database_url=store) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused")
        relayed = list(client.chat.completions.create(
            model="avengers", messages=user(ARITHMETIC), tools=TOOLS, stream=True,
            stream_options={"include_usage": True},
        ))  # fmt: skip
        voted = list(client.chat.completions.create(
            model="avengers", messages=user(ARITHMETIC), tools=TOOLS, stream=True,
            extra_body={"samples": 3},
        ))  # fmt: skip

    def calls(chunks):
        out: dict[int, dict] = {}
        for chunk in chunks:
            for choice in chunk.choices:
                for d in choice.delta.tool_calls or []:
                    call = out.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                    call["id"] = d.id or call["id"]
                    call["name"] += (d.function.name or "") if d.function else ""
                    call["arguments"] += (d.function.arguments or "") if d.function else ""
        return out

    def reasons(chunks):
        return [
            c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
        ]

    one = calls(relayed)
    assert one[0]["name"] == "get_weather" and json.loads(one[0]["arguments"]) == PARIS["arguments"]
    # Relayed as the model streamed them: the name, then the arguments in pieces.
    pieces = [c for c in relayed if c.choices and c.choices[0].delta.tool_calls]
    assert len(pieces) == 3
    assert reasons(relayed) == ["tool_calls"] and relayed[-1].usage.prompt_tokens == 10
    several = calls(voted)
    assert json.loads(several[0]["arguments"]) == PARIS["arguments"] and several[0]["id"]
    assert reasons(voted) == ["tool_calls"]


def test_responses_api_create_and_stream_for_avengers_and_a_pool_model(store, upstream):
    upstream.answers("bravo", "Hamlet was written by Shakespeare.")
    upstream.answers("alpha", {"tool_calls": [PARIS]})
    tools = [{"type": "function", **TOOLS[0]["function"]}]
    with gateway_server(SETTINGS, database_url=store) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused")
        raw = client.responses.with_raw_response.create(
            model="avengers", input=LITERATURE, instructions="Answer in one sentence.",
            max_output_tokens=40,
        )  # fmt: skip
        direct = client.responses.create(model="bravo", input=[
            {"role": "user", "content": [{"type": "input_text", "text": LITERATURE}]}
        ])  # fmt: skip
        called = client.responses.create(model="avengers", input=ARITHMETIC, tools=tools)
        with client.responses.stream(model="avengers", input=LITERATURE) as stream:
            kinds = [event.type for event in stream]
            streamed = stream.get_final_response()
        with client.responses.stream(model="avengers", input=ARITHMETIC, tools=tools) as stream:
            call_kinds = [event.type for event in stream]
            streamed_call = stream.get_final_response()
        feedback = httpx.post(gw.base_url + "/v1/feedback",
                              json={"route_id": streamed.id, "score": 1})  # fmt: skip
        refused = httpx.post(gw.base_url + "/v1/responses",
                             json={"model": "avengers", "input": "hi",
                                   "previous_response_id": "resp_1"})  # fmt: skip
    response = raw.parse()
    assert response.output_text == "Hamlet was written by Shakespeare."
    assert response.status == "completed" and response.model == "bravo"
    assert raw.headers["x-avengers-cluster"] == "1" and raw.headers["x-avengers-models"] == "bravo"
    assert response.id == "resp_" + raw.headers["x-avengers-route-id"].replace("-", "")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (10, 5)
    first = upstream.requests_for("bravo")[0]["body"]
    assert first["messages"] == [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": LITERATURE},
    ]
    assert first["max_tokens"] == 40
    assert direct.output_text == "Hamlet was written by Shakespeare." and direct.model == "bravo"
    (item,) = called.output
    assert item.type == "function_call" and item.name == "get_weather"
    assert json.loads(item.arguments) == PARIS["arguments"] and item.call_id == "call_0_0"
    assert upstream.requests_for("alpha")[0]["body"]["tools"] == TOOLS
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds and kinds[-1] == "response.completed"
    assert streamed.output_text == "Hamlet was written by Shakespeare."
    assert "response.function_call_arguments.delta" in call_kinds
    assert streamed_call.output[0].name == "get_weather"
    assert json.loads(streamed_call.output[0].arguments) == PARIS["arguments"]
    assert feedback.status_code == 200 and feedback.json()["model"] == "bravo"
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "previous_response_id"
    route_id = raw.headers["x-avengers-route-id"]
    strategy, models, _, _, _, meta = rows_for(store, [route_id])[route_id]
    assert (strategy, models, meta["api"]) == ("self-consistency", ["bravo"], "responses")


def test_responses_function_call_items_become_the_tool_history(store, upstream):
    upstream.answers("bravo", "It is sunny; Shakespeare wrote Hamlet.")
    with gateway_server(SETTINGS, database_url=store) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused")
        client.responses.create(model="avengers", input=[
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": "c1", "name": "get_weather",
             "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"role": "user", "content": LITERATURE},
        ])  # fmt: skip
    (sent,) = [r["body"] for r in upstream.requests_for("bravo")]
    assert sent["messages"][1:3] == [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]  # fmt: skip
