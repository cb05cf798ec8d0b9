"""A scripted OpenAI-compatible server: a real ``http.server`` on a free loopback port that
answers chat completions (whole or streamed), embeddings and faults as a test scripts them."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from avengers_store.answering.chat import Endpoint
from avengers_store.ingest.text_identity import content_hash


@dataclass
class Script:
    """What one served model name answers. Consumed in order; the last step repeats.

    A step is one of:
      ``{"texts": [...]}``          choices cycle through these texts (``n`` of them, or
                                    ``"max_choices"`` if smaller); an item may also be an
                                    answer of its own: ``{"text": ..., "tool_calls": [{"name":
                                    ..., "arguments": {...}}], "finish_reason": "length"}``
                                    (``reply``); with ``"usage_as_one": True`` the usage is
                                    one choice's and carries llama.cpp's ``timings`` report;
      ``{"status": 500}``           an error status with a JSON error body (``"retry_after"``:
                                    a ``Retry-After`` header; ``"echo_auth"``: the error message
                                    quotes the request's Authorization header, as careless
                                    servers do);
      ``{"raw": "not json"}``       a raw 200 body;
      ``{"json": {...}}``           a JSON 200 body as given;
      ``{"hang": True}``            read the request and never answer (until the server stops);
      ``{"cut": True}``             announce a body, send half of it and close the connection;
      ``{"delay": 2.0, ...}``       sleep first (combine with any of the above);
      ``{"drip": 0.2, ...}``        send the answer in 8 pieces, ``drip`` seconds apart.

    A request with ``"stream": true`` gets the next text as server-sent events, one word per
    ``chat.completion.chunk`` (``"chunk_delay"`` seconds apart; tool calls as a name, then their
    arguments in two pieces), then ``data: [DONE]``; with ``"cut_after": k`` the connection is
    closed after k events, without ``[DONE]``; ``"first_delay"`` seconds pass before the first
    event (after the headers). A request asking for ``logprobs`` gets one entry per word (with
    ``top_logprobs`` alternatives).

    ``POST /v1/embeddings`` answers with one unit vector per input text, the same for the same
    text, for any model name (``"dim"`` of the model's step if scripted, else 16; ``delay`` and
    ``status`` apply).
    """

    steps: list[dict[str, Any]]
    position: int = 0

    def next_step(self) -> dict[str, Any]:
        step = self.steps[min(self.position, len(self.steps) - 1)]
        self.position += 1
        return step


def reply(item: str | dict[str, Any], body: dict[str, Any], serial: int) -> dict[str, Any]:
    """The message, finish reason and logprobs of one scripted answer (``Script``): a text, or
    ``{"text", "tool_calls", "finish_reason"}``; tool calls get ids ``call_<serial>_<i>``."""
    spec = {"text": item} if isinstance(item, str) else dict(item)
    calls = [
        {
            "id": f"call_{serial}_{i}",
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}))},
        }
        for i, c in enumerate(spec.get("tool_calls") or [])
    ]
    message: dict[str, Any] = {"role": "assistant", "content": spec.get("text")}
    if calls:
        message["tool_calls"] = calls
    reason = spec.get("finish_reason") or ("tool_calls" if calls else "stop")
    out: dict[str, Any] = {"message": message, "finish_reason": reason}
    if body.get("logprobs") and message["content"]:
        alternatives = int(body.get("top_logprobs") or 0)
        out["logprobs"] = {
            "content": [
                {
                    "token": word,
                    "logprob": -0.5,
                    "bytes": list(word.encode()),
                    "top_logprobs": [
                        {"token": word, "logprob": -0.5, "bytes": list(word.encode())}
                    ][:alternatives],
                }
                for word in _words(message["content"])
            ]
        }
    return out


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def text_vector(text: str, dim: int) -> list[float]:
    """A unit vector that depends only on ``text`` (the scripted embeddings)."""
    seed = int.from_bytes(content_hash(text).encode()[:8], "little")
    row = np.random.default_rng(seed).standard_normal(dim)
    return (row / np.linalg.norm(row)).astype(np.float32).tolist()


@dataclass
class ScriptedServer:
    base_url: str
    scripts: dict[str, Script] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    def script(self, served_name: str, *steps: dict[str, Any]) -> None:
        with self.lock:
            self.scripts[served_name] = Script(list(steps))

    def answers(self, served_name: str, *texts: str, max_choices: int | None = None) -> None:
        """Shorthand: ``served_name`` always answers with ``texts`` (cycled)."""
        step: dict[str, Any] = {"texts": list(texts)}
        if max_choices is not None:
            step["max_choices"] = max_choices
        self.script(served_name, step)

    def endpoint(self, served_name: str, model: str | None = None, **kw: Any) -> Endpoint:
        return Endpoint(
            model=model or served_name, base_url=self.base_url, served_name=served_name, **kw
        )

    def requests_for(self, served_name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r.get("body", {}).get("model") == served_name]


def _make_handler(state: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _send(
            self,
            status: int,
            body: bytes,
            ctype: str = "application/json",
            *,
            headers: dict[str, str] | None = None,
            drip: float = 0.0,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            # the client may have given up already (timeout tests)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if not drip:
                    self.wfile.write(body)
                    return
                size = max(1, -(-len(body) // 8))
                for start in range(0, len(body), size):
                    self.wfile.write(body[start : start + size])
                    self.wfile.flush()
                    if state.stopping.wait(drip):
                        return

        def _cut(self) -> None:
            """Announce a body, send half of it and close the connection."""
            body = json.dumps({"choices": [{"message": {"content": "cut off"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def _stream(self, body: dict[str, Any], item: Any, step: dict[str, Any]) -> None:
            """One choice as server-sent events, a word per chunk (``chunk_delay`` apart)."""
            with state.lock:
                serial = step.get("_served", 0)
                step["_served"] = serial + 1
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            answer = reply(item, body, serial)
            message = answer["message"]
            pieces = _words(message["content"]) if message["content"] else []
            logprobs = (answer.get("logprobs") or {}).get("content") or []
            base = {"id": "scripted", "object": "chat.completion.chunk", "model": body.get("model")}
            events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
            for k, piece in enumerate(pieces):
                choice: dict[str, Any] = {"index": 0, "delta": {"content": piece}}
                if logprobs:
                    choice["logprobs"] = {"content": [logprobs[k]]}
                events.append({**base, "choices": [{**choice, "finish_reason": None}]})
            for i, call in enumerate(message.get("tool_calls") or []):
                head = {"index": i, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
                arguments = call["function"]["arguments"]
                half = len(arguments) // 2
                events += [
                    {**base, "choices": [{"index": 0, "delta": {"tool_calls": [head]}}]},
                    *(
                        {**base, "choices": [{"index": 0, "delta": {"tool_calls": [
                            {"index": i, "function": {"arguments": part}}]}}]}
                        for part in (arguments[:half], arguments[half:])
                    ),
                ]  # fmt: skip
            events.append(
                {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": answer["finish_reason"]}]}
            )  # fmt: skip
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 10, "completion_tokens": max(1, len(pieces))}
                events.append({**base, "choices": [], "usage": usage})
            cut_after = step.get("cut_after")
            if step.get("first_delay") and state.stopping.wait(step["first_delay"]):
                return
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for sent, event in enumerate(events):
                    if cut_after is not None and sent >= cut_after:
                        with contextlib.suppress(OSError):
                            self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                    if step.get("chunk_delay") and state.stopping.wait(step["chunk_delay"]):
                        return
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        def _embeddings(self, body: dict[str, Any], step: dict[str, Any]) -> None:
            texts = body.get("input")
            texts = [texts] if isinstance(texts, str) else list(texts or [])
            dim = int(step.get("dim", 16))
            data = [
                {"object": "embedding", "index": i, "embedding": text_vector(str(t), dim)}
                for i, t in enumerate(texts)
            ]
            payload = {"object": "list", "data": data, "model": body.get("model")}
            self._send(200, json.dumps(payload).encode())

        def do_GET(self) -> None:
            if self.path in ("/health", "/v1/models"):
                self._send(200, b'{"status":"ok"}')
            else:
                self._send(404, b'{"error":"not found"}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                self._send(400, b'{"error":{"message":"bad json"}}')
                return
            auth = self.headers.get("Authorization")
            with state.lock:
                state.requests.append({"path": self.path, "body": body, "auth": auth})
                script = state.scripts.get(body.get("model"))
                step = script.next_step() if script else None
            embeddings = self.path == "/v1/embeddings"
            if self.path != "/v1/chat/completions" and not embeddings:
                self._send(404, b'{"error":{"message":"no such route"}}')
                return
            if step is None and embeddings:
                step = {}  # any model name embeds, in 16 dimensions unless scripted
            if step is None:
                message = {"error": {"message": f"model {body.get('model')!r} does not exist"}}
                self._send(404, json.dumps(message).encode())
                return
            if step.get("gate") is not None:
                # a threading.Event the test sets: requests wait here until then (at most 60 s)
                step["gate"].wait(60)
            if step.get("delay") and state.stopping.wait(step["delay"]):
                return
            if step.get("hang"):
                state.stopping.wait()
                self.close_connection = True
                return
            if "status" in step:
                message = step.get("message", "scripted failure")
                if step.get("echo_auth"):
                    message += f" (got Authorization: {auth})"
                headers = {}
                if "retry_after" in step:
                    headers["Retry-After"] = str(step["retry_after"])
                error = {"error": {"message": message}}
                self._send(step["status"], json.dumps(error).encode(), headers=headers)
                return
            if step.get("cut") and not body.get("stream"):
                self._cut()
                return
            if embeddings:
                self._embeddings(body, step)
                return
            drip = float(step.get("drip", 0.0))
            if "raw" in step:
                self._send(200, step["raw"].encode(), "text/plain", drip=drip)
                return
            if "json" in step:
                self._send(200, json.dumps(step["json"]).encode(), drip=drip)
                return
            texts = step["texts"]
            if body.get("stream"):
                self._stream(body, texts[step.setdefault("_served", 0) % len(texts)], step)
                return
            n = int(body.get("n") or 1)
            count = min(n, step.get("max_choices", n))
            with state.lock:
                offset = step.setdefault("_served", 0)
                step["_served"] = offset + count
            choices = [
                {"index": i, **reply(texts[(offset + i) % len(texts)], body, offset + i)}
                for i in range(count)
            ]
            payload = {
                "id": "scripted",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": choices,
                "usage": {"prompt_tokens": 10, "completion_tokens": 5 * count},
            }
            if step.get("usage_as_one"):  # as llama.cpp's server reports n choices
                payload["usage"] = {"prompt_tokens": 10, "completion_tokens": 5}
                payload["timings"] = {"prompt_n": 10, "predicted_n": 5}
            self._send(200, json.dumps(payload).encode(), drip=drip)

    return Handler


@contextlib.contextmanager
def scripted_server() -> Iterator[ScriptedServer]:
    """A real HTTP server on a free loopback port answering as the caller scripts it."""
    state = ScriptedServer(base_url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    httpd.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(
        target=httpd.serve_forever, args=(0.05,), name="scripted-llm", daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        state.stopping.set()  # releases hung and delayed answers
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
