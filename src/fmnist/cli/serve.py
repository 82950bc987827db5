"""`fmnist serve RUN_DIR|CHECKPOINT`: the HTTP API and the web page (see fmnist.serve.app)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time
from typing import Any

from fmnist.cli.common import add_command
from fmnist.errors import ConfigError


def add_parser(sub: Any) -> None:
    p = add_command(sub, "serve", "serve a model over HTTP, with a web page to try it")
    p.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT",
                   help="run folder, model.safetensors, or a Quickstart model.pth")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes, each with its own copy of the model (default 1)")
    p.add_argument("--model", default=None,
                   help="architecture the checkpoint must hold (picks it for a Quickstart .pth)")
    p.add_argument("--max-upload-mb", type=float, default=10.0,
                   help="largest request body accepted, in MiB (default 10)")
    p.add_argument("--max-batch", type=int, default=64,
                   help="most images per request (default 64)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from fmnist.serve.app import create_app
    except ImportError as e:  # `make run` installs only what training needs
        raise ConfigError(
            f"fmnist serve needs the '{e.name}' package: pip install -e '.[serve]' "
            "(or make setup-full)."
        ) from None
    from fmnist.predict import Predictor

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"Invalid --port {args.port}: use 0-65535.")
    if args.workers < 1:
        raise ConfigError(f"Invalid --workers {args.workers}: use 1 or more.")
    if args.max_batch < 1 or args.max_upload_mb <= 0:
        raise ConfigError("--max-batch and --max-upload-mb must be positive.")
    max_upload = int(args.max_upload_mb * 2**20)  # MiB, like the app's default

    # Load once here even with several workers: a bad checkpoint fails now, in one line.
    t0 = time.perf_counter()
    predictor = Predictor.from_checkpoint(args.checkpoint, model=args.model)
    predictor.warmup()
    meta = predictor.meta
    acc = (meta.get("metrics") or {}).get("test_accuracy")
    acc_text = f", test accuracy {acc:.2%}" if isinstance(acc, int | float) else ""
    print(
        f"Loaded '{meta.get('model')}' from {args.checkpoint}{acc_text} "
        f"in {time.perf_counter() - t0:.1f} s.",
        file=sys.stderr,
    )
    if not _is_loopback(args.host):
        print(f"Warning: binding {args.host} exposes the server beyond this machine.", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"Page at http://{shown}:{args.port}/  API docs at http://{shown}:{args.port}/docs",
          file=sys.stderr)  # fmt: skip

    common = {"host": args.host, "port": args.port, "log_level": args.log_level}
    if args.workers == 1:
        app = create_app(
            predictor, max_upload_bytes=max_upload, max_batch=args.max_batch, warmup=False
        )
        uvicorn.run(app, **common)
    else:
        # Worker processes import the app by name and load the model themselves.
        os.environ["FMNIST_SERVE_CHECKPOINT"] = str(args.checkpoint)
        os.environ["FMNIST_SERVE_MODEL"] = args.model or ""
        os.environ["FMNIST_SERVE_MAX_UPLOAD"] = str(max_upload)
        os.environ["FMNIST_SERVE_MAX_BATCH"] = str(args.max_batch)
        del predictor
        uvicorn.run("fmnist.serve.app:app_from_env", factory=True, workers=args.workers, **common)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
