"""A small real model server for trying the router on one machine: SmolLM2-135M (a 98 MB GGUF)
served by llama.cpp's own OpenAI-compatible server (xllamacpp), as model name ``smol``.

    python examples/local_model_server.py --port 8012      # needs `make install-test`

It answers /v1/chat/completions until stopped (Ctrl-C or SIGTERM). The model is tiny: its
answers are real but often wrong, which is enough to watch routing, sampling and voting work.
In production each pool model is a vLLM server instead (docs/operations.md).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading

from avengers_store.testing import SMOL_ALIAS, smol_gguf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8012, help="port to listen on")
    args = parser.parse_args(argv)
    try:
        import xllamacpp
    except ImportError:
        sys.exit("xllamacpp is not installed: run `make install-test` first")
    gguf = smol_gguf()
    if gguf is None:
        sys.exit("the SmolLM2 GGUF is not installed: run `make install-test` first")
    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.hostnames = [args.host]
    params.port = args.port
    params.n_parallel = 4
    params.n_ctx = 4096
    params.model_alias = {SMOL_ALIAS}
    # One thread: llama.cpp's thread barrier spins, which is slow on a busy 2-core machine.
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = xllamacpp.Server(params)
    print(f"serving {SMOL_ALIAS!r} at http://{args.host}:{args.port}/v1", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
