"""`fmnist serve RUN_DIR|CHECKPOINT|MODEL.onnx`: the HTTP API and the web page (see
fmnist.serve.app)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fmnist.cli.common import add_command
from fmnist.errors import ConfigError

# One single-threaded worker per core: the GIL keeps one process's HTTP and decoding work on
# one core. On 2 cores with torch, 2 workers x 1 thread answered 291-464 requests/s at 8
# clients against 264-322 for 1 worker x 2 threads (README, "Serve it"; the spread is how the
# kernel splits the connections). Capped because every worker holds its own copy of torch
# (about 270 MB RSS each, measured); more than 2 cores were not measured.
MAX_AUTO_WORKERS = 4
AUTO_WORKERS_TEXT = f"one per core, at most {MAX_AUTO_WORKERS}"


def add_parser(sub: Any) -> None:
    p = add_command(sub, "serve", "serve a model over HTTP, with a web page to try it")
    p.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT",
                   help="run folder, model.safetensors, a Quickstart model.pth, or an exported "
                        "model.onnx")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--workers", default="auto",
                   help="worker processes, each with its own copy of the model and its share of "
                        f"the cores (default auto: {AUTO_WORKERS_TEXT})")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"],
                   help="what runs the model: onnxruntime (the checkpoint is exported in memory "
                        "at start-up; faster on CPU) or torch; auto (default) takes onnxruntime "
                        "when it is installed")
    p.add_argument("--model", default=None,
                   help="architecture the checkpoint must hold (picks it for a Quickstart .pth)")
    p.add_argument("--max-upload-mb", type=float, default=10.0,
                   help="largest request body accepted, in MiB (default 10)")
    p.add_argument("--max-batch", type=int, default=64,
                   help="most images per request (default 64)")
    p.add_argument("--batch-window-ms", type=float, default=2.0,
                   help="how long a request waits for others to share its forward pass "
                        "(default 2)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="most images in one shared forward pass (default 64)")
    p.add_argument("--no-batching", action="store_true",
                   help="one forward pass per request, in turn (for comparison)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="predictions in flight per worker before new ones get 503 "
                        "(default 64)")
    p.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds a request body may take to arrive before a 408 (default 30)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)  # fmt: skip


def workers_and_threads(workers: str, cpus: int) -> tuple[int, int]:
    """(worker processes, torch threads each) for `--workers N|auto` on `cpus` cores."""
    if workers == "auto":
        n = max(1, min(cpus, MAX_AUTO_WORKERS))
    else:
        try:
            n = int(workers)
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"Invalid --workers {workers}: use auto or a number from 1.")
    return n, max(1, cpus // n)  # the workers share the cores instead of fighting over them


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from fmnist.serve.app import SETTINGS_ENV, Batching, create_app
    except ImportError as e:  # `make run` installs only what training needs
        raise ConfigError(
            f"fmnist serve needs the '{e.name}' package: pip install -e '.[serve]' "
            "(or make setup-full)."
        ) from None
    import torch

    from fmnist.serve.backends import OnnxPredictor, load_predictor

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"Invalid --port {args.port}: use 0-65535.")
    workers, threads = workers_and_threads(args.workers, os.cpu_count() or 1)
    if args.max_batch < 1 or args.max_upload_mb <= 0 or args.batch_size < 1 or args.max_queue < 1:
        raise ConfigError("--max-batch, --max-upload-mb, --batch-size and --max-queue must be positive.")
    if args.batch_window_ms < 0 or args.request_timeout <= 0:
        raise ConfigError("--batch-window-ms must be 0 or more and --request-timeout positive.")
    options: dict[str, Any] = {
        "max_upload_bytes": int(args.max_upload_mb * 2**20),  # MiB, like the app's default
        "max_batch": args.max_batch,
        "max_queue": args.max_queue,
        "request_timeout_s": args.request_timeout,
        "batching": {"enabled": not args.no_batching, "window_ms": args.batch_window_ms,
                     "max_images": args.batch_size},
    }  # fmt: skip

    # Load once here even with several workers: a bad checkpoint fails now, in one line.
    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    predictor = load_predictor(args.checkpoint, args.model, args.backend)
    backend = "onnxruntime" if isinstance(predictor, OnnxPredictor) else "torch"
    predictor.warmup()
    meta = predictor.meta
    acc = (meta.get("metrics") or {}).get("test_accuracy")
    acc_text = f", test accuracy {acc:.2%}" if isinstance(acc, int | float) else ""
    batching = "off" if args.no_batching else f"{args.batch_window_ms:g} ms window, up to {args.batch_size}"
    print(
        f"Loaded '{meta.get('model')}' from {args.checkpoint}{acc_text} "
        f"in {time.perf_counter() - t0:.1f} s; backend {backend}, {workers} worker(s) x "
        f"{threads} thread(s), batching {batching}.",
        file=sys.stderr,
    )
    if not _is_loopback(args.host):
        print(f"Warning: binding {args.host} exposes the server beyond this machine.", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    port = args.port or "PORT"  # --port 0: the port the system picks, in uvicorn's line below
    print(f"Page at http://{shown}:{port}/  API docs at http://{shown}:{port}/docs",
          file=sys.stderr)  # fmt: skip

    common = {"host": args.host, "port": args.port, "log_level": args.log_level}
    if workers == 1:
        app = create_app(predictor, **{**options, "batching": Batching(**options["batching"])},
                         warmup=False)  # fmt: skip
        uvicorn.run(app, **common)
        return 0
    with tempfile.TemporaryDirectory(prefix="fmnist-serve-") as tmp:
        source, model = str(args.checkpoint), args.model
        if isinstance(predictor, OnnxPredictor) and not source.endswith(".onnx"):
            # export once here, not once per worker (seconds each)
            source, model = str(Path(tmp) / "model.onnx"), None
            Path(source).write_bytes(predictor.onnx_model)
        # Worker processes import the app by name and load the model themselves.
        os.environ[SETTINGS_ENV] = json.dumps({
            "checkpoint": source, "model": model, "backend": backend, "threads": threads,
            "app": options,
        })  # fmt: skip
        del predictor
        run_workers(workers, common)
    return 0


def run_workers(workers: int, common: dict[str, Any]) -> None:
    """`uvicorn.run(..., workers=N)`, with Nagle's algorithm off on the connections.

    uvicorn makes the shared socket with protocol 0, so asyncio does not set TCP_NODELAY on the
    connections it accepts (it does for the sockets it makes itself, with one worker): a
    keep-alive client then waits for its own delayed ACK (~40 ms) on every answer's second
    write. Measured with wrk, 1 client, 2 workers: 51 ms per request, 15 ms with a new
    connection each time. Set on the listening socket, Linux passes it to every accepted one.
    """
    import inspect
    import socket

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config("fmnist.serve.app:app_from_env", factory=True, workers=workers, **common)
    sock = config.bind_socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # older uvicorn releases take the worker's entry point as `target`
    target = {"target": uvicorn.Server(config).run} if "target" in inspect.signature(Multiprocess).parameters else {}
    try:
        Multiprocess(config, sockets=[sock], **target).run()
    finally:
        sock.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
