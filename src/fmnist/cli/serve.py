"""`fmnist serve RUN_DIR|CHECKPOINT|MODEL.onnx`: the HTTP API and the web page (see
fmnist.serve.app).

One job, the command's: from flags to running processes. Its parts (checking the flags, pinning
and loading the model once, one process or a supervisor with workers, the shared socket) are
the steps of that one start-up, each used only here; the serving itself is fmnist.serve."""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fmnist.cli.common import add_command, add_device, hidden_alias
from fmnist.errors import ConfigError

# One single-threaded worker per core: the GIL keeps one process's HTTP and decoding work on
# one core. On 2 cores (AMD EPYC, avx512) with torch, 2 workers x 1 thread answered 757
# requests/s at 8 clients against 391 for 1 worker x 2 threads, 1,432 vs 646 at 32 (docs/serving.md).
# Capped because every worker holds its own copy of torch
# (about 270 MB RSS each, measured); more than 2 cores were not measured.
MAX_AUTO_WORKERS = 4
AUTO_WORKERS_TEXT = f"one per core, at most {MAX_AUTO_WORKERS}"


def add_parser(sub: Any) -> None:
    p = add_command(sub, "serve", "serve a model over HTTP, with a web page to try it")
    p.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT",
                   help="run folder, model.safetensors, a Quickstart model.pth, or an exported "
                        "model.onnx")
    p.add_argument("--api-key-file", default=None, metavar="FILE",
                   help="require the key in FILE (Authorization: Bearer KEY) on every route but "
                        "the probes and the page; default: the FMNIST_API_KEY variable, if set")
    add_device(p)
    p.add_argument("--coverage", type=float, default=None,
                   help="how often a prediction's set of classes holds the true one, as a "
                        "fraction (default 0.9; the model must have been calibrated)")
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
    p.add_argument("--max-images", dest="max_batch", type=int, default=64,
                   help="most images per request (default 64)")
    hidden_alias(p, "--max-batch", dest="max_batch", type=int)
    p.add_argument("--max-image-megapixels", type=float, default=40.0,
                   help="largest image accepted, in millions of pixels (default 40)")
    p.add_argument("--max-request-megapixels", type=float, default=64.0,
                   help="most pixels in all of one request's images, in millions (default 64)")
    p.add_argument("--batch-window-ms", type=float, default=2.0,
                   help="how long a request waits for others to share its forward pass "
                        "(default 2)")
    p.add_argument("--max-pass-images", dest="batch_size", type=int, default=64,
                   help="most images in one shared forward pass (default 64)")
    hidden_alias(p, "--batch-size", dest="batch_size", type=int)
    p.add_argument("--no-batching", action="store_true",
                   help="one forward pass per request, in turn (for comparison)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="predictions in flight per worker before new ones get 503 "
                        "(default 64)")
    p.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds a request body may take to arrive before a 408 (default 30)")
    p.add_argument("--max-uploads", type=int, default=256,
                   help="request bodies arriving at once per worker before new ones get 503 "
                        "(default 256; they do not count towards --max-queue)")
    p.add_argument("--predict-timeout", type=float, default=30.0,
                   help="seconds an admitted prediction may wait for its answer before a 503 "
                        "(default 30)")
    p.add_argument("--graceful-timeout", type=float, default=10.0,
                   help="on SIGTERM/SIGINT, seconds to answer the requests already accepted "
                        "before exiting (default 10)")
    p.add_argument("--drain-delay", type=float, default=0.0,
                   help="on SIGTERM/SIGINT, seconds to keep accepting with /readyz at 503, so a "
                        "load balancer stops sending first (default 0)")
    p.add_argument("--watchdog-timeout", type=float, default=10.0,
                   help="with several workers, seconds a worker's event loop may stay stuck before "
                        "it is killed and replaced (default 10; 0: never)")
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


def checked_options(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The app's options and uvicorn's from the flags, each flag checked first (one sentence
    for a bad one)."""
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"Invalid --port {args.port}: use 0-65535.")
    if args.max_batch < 1 or args.max_upload_mb <= 0 or args.batch_size < 1 or args.max_queue < 1:
        raise ConfigError("--max-images, --max-upload-mb, --max-pass-images and --max-queue must be positive.")
    if args.max_uploads < 1:
        raise ConfigError("--max-uploads must be positive.")
    if args.max_image_megapixels <= 0 or args.max_request_megapixels <= 0:
        raise ConfigError("--max-image-megapixels and --max-request-megapixels must be positive.")
    if args.batch_window_ms < 0 or args.drain_delay < 0:
        raise ConfigError("--batch-window-ms and --drain-delay must be 0 or more.")
    if args.watchdog_timeout < 0:
        raise ConfigError("--watchdog-timeout must be 0 (off) or more.")
    if args.request_timeout <= 0 or args.predict_timeout <= 0 or args.graceful_timeout <= 0:
        raise ConfigError("--request-timeout, --predict-timeout and --graceful-timeout must be positive.")
    options: dict[str, Any] = {
        "api_key": api_key(args.api_key_file),
        "max_upload_bytes": int(args.max_upload_mb * 2**20),  # MiB, like the app's default
        "max_batch": args.max_batch,
        "max_pixels": int(args.max_image_megapixels * 1e6),
        "max_request_pixels": int(args.max_request_megapixels * 1e6),
        "max_queue": args.max_queue,
        "request_timeout_s": args.request_timeout,
        "max_uploads": args.max_uploads,
        "predict_timeout_s": args.predict_timeout,
        "batching": {"enabled": not args.no_batching, "window_ms": args.batch_window_ms,
                     "max_images": args.batch_size},
    }  # fmt: skip
    common = {"host": args.host, "port": args.port, "log_level": args.log_level,
              "timeout_graceful_shutdown": args.graceful_timeout}  # fmt: skip
    return options, common


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from fmnist.serve.metrics import MULTIPROC_ENV
        from fmnist.serve.server import serve
    except ImportError as e:  # `make run` installs only what training needs
        raise ConfigError(
            f"fmnist serve needs the '{e.name}' package: pip install -e '.[serve]' "
            "(or make setup-full)."
        ) from None

    workers, threads = workers_and_threads(args.workers, os.cpu_count() or 1)
    options, common = checked_options(args)

    # The model is pinned: resolved once, copied into the server's own folder, loaded from
    # there (fmnist.serve.pinning). This process loads it first, so that a bad checkpoint fails
    # now, in one line, and an ONNX export is made once, not once per worker.
    tmp = Path(tempfile.mkdtemp(prefix="fmnist-serve-"))  # removed when the server stops
    try:
        pinned, predictor = load(args, threads, workers, tmp / "model-0")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _announce(args)

    if workers == 1:  # this process serves
        from fmnist.serve.app import Batching, create_app, swap_in
        from fmnist.serve.prepare import prepare

        try:
            app = create_app(predictor, **{**options, "batching": Batching(**options["batching"])},
                             warmup=False, model_id=pinned.model_id)  # fmt: skip
            generations = itertools.count(1)

            def repin() -> tuple[Any, None]:  # SIGHUP: the path again, into a folder of its own
                into = tmp / f"model-{next(generations)}"
                return prepare(args.checkpoint, args.model, args.backend, into, args.coverage,
                               args.device)[0], None  # fmt: skip

            app.state.reload = lambda: swap_in(app.state.engine, repin, args.coverage, args.device)
            return serve(uvicorn.Config(app, **common), drain_s=args.drain_delay)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    from fmnist.serve.pinning import write_current
    from fmnist.serve.server import SETTINGS_ENV

    # Worker processes import the app by name and load the pinned model themselves; then this
    # process becomes a lean supervisor (see become_supervisor).
    current = tmp / "current.json"
    write_current(current, pinned)
    os.environ[SETTINGS_ENV] = json.dumps({"current": str(current), "threads": threads,
                                           "coverage": args.coverage, "device": args.device,
                                           "app": options})  # fmt: skip
    # /metrics sums every worker's values from files here (prometheus_client reads the
    # variable when the workers import it); an operator's own directory is kept
    if MULTIPROC_ENV not in os.environ:
        (tmp / "metrics").mkdir()
        os.environ[MULTIPROC_ENV] = str(tmp / "metrics")
    del predictor
    reload = {"checkpoint": str(args.checkpoint), "model": args.model, "backend": args.backend}
    return become_supervisor({"workers": workers, "common": common, "drain_s": args.drain_delay,
                              "tmp": str(tmp), "watchdog_s": args.watchdog_timeout,
                              "reload": reload})  # fmt: skip


def api_key(path: str | None) -> str | None:
    """The key in `path` (its one line), else FMNIST_API_KEY's value, else None."""
    from fmnist.serve.auth import ENV

    if path is None:
        return os.environ.get(ENV) or None
    try:
        if Path(path).stat().st_size > 4096:
            raise ConfigError(f"{path} is too large for an API key file (one line expected).")
        key = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"Cannot read the API key file {path}: {getattr(e, 'strerror', None) or e}.") from None
    if not key or "\n" in key:
        raise ConfigError(f"The API key file {path} must hold one non-empty line.")
    return key


def load(args: argparse.Namespace, threads: int, workers: int, into: Path) -> tuple[Any, Any]:
    """(the pinned model, its backend, warm), with the "Loaded ..." line on stderr."""
    import torch

    from fmnist.hardware import resolve_device
    from fmnist.serve.backends import as_backend
    from fmnist.serve.prepare import prepare

    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    args.device = str(resolve_device(args.device))  # auto: what this machine has, once
    pinned, predictor = prepare(args.checkpoint, args.model, args.backend, into, args.coverage,
                                args.device)  # fmt: skip
    predictor = as_backend(predictor)
    meta = predictor.meta
    acc = (meta.get("metrics") or {}).get("test_accuracy")
    acc_text = f", test accuracy {acc:.2%}" if isinstance(acc, int | float) else ""
    batching = "off" if args.no_batching else f"{args.batch_window_ms:g} ms window, up to {args.batch_size}"
    print(
        f"Loaded '{meta.get('model')}' from {pinned.source}{acc_text} "
        f"in {time.perf_counter() - t0:.1f} s; model id {pinned.model_id}; backend "
        f"{predictor.name}, {workers} worker(s) x {threads} thread(s), batching {batching}.",
        file=sys.stderr,
    )
    return pinned, predictor


def become_supervisor(spec: dict[str, Any]) -> int:
    """Run the workers under a supervisor that holds neither torch nor the model.

    Python cannot unload torch (the CLI's parser imports it, and loading the model did), and a
    process that never predicts would keep it and the model: about 260 MB. So this process
    re-executes itself as `python -m fmnist.cli.serve SPEC` (`supervise`), which imports only
    uvicorn and prometheus_client. exec keeps the process id, its environment and its standard
    streams: a process manager, a container runtime or a shell sees the same process, and its
    signals reach the supervisor. Where exec is not available, this process supervises as it is.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        try:
            os.execv(sys.executable, [sys.executable, "-m", "fmnist.cli.serve", json.dumps(spec)])
        except OSError as e:  # fall through: supervise from here, torch and all
            logging.getLogger("uvicorn.error").warning("Cannot re-execute as a lean supervisor: %s", e)
    return supervise(spec)


def supervise(spec: dict[str, Any]) -> int:
    """The supervisor's life: the workers until a signal, then the temporary files go."""
    try:
        return run_workers(spec["workers"], spec["common"], drain_s=spec["drain_s"],
                           watchdog_s=spec.get("watchdog_s", 10.0),
                           reload=reloader(Path(spec["tmp"]), spec["reload"]) if spec.get("reload") else None)  # fmt: skip
    finally:
        shutil.rmtree(spec["tmp"], ignore_errors=True)


def reloader(tmp: Path, source: dict[str, Any]) -> Any:
    """The supervisor's SIGHUP: pin `source` again, in a process of its own (this one holds no
    torch), and write the result, or why it failed, where the workers read it."""
    from fmnist.serve.pinning import Pinned, read_current, write_current

    current = tmp / "current.json"
    generations = itertools.count(1)
    log = logging.getLogger("uvicorn.error")

    def reload() -> None:
        into = tmp / f"model-{next(generations)}"
        log.info("SIGHUP: loading %s again", source["checkpoint"])
        done = subprocess.run(
            [sys.executable, "-m", "fmnist.serve.prepare", source["checkpoint"], source["model"] or "",
             source["backend"], str(into)], capture_output=True, text=True,
        )  # fmt: skip
        old, _ = read_current(current)
        if done.returncode == 0:
            pinned = Pinned(**json.loads(done.stdout.strip().splitlines()[-1]))
            write_current(current, pinned)
            log.info("SIGHUP: model %s from %s is ready; the workers load it now", pinned.model_id,
                     pinned.source)  # fmt: skip
        else:
            lines = done.stderr.strip().splitlines()
            error = lines[-1] if lines else f"status {done.returncode}"
            write_current(current, old, f"Reload failed: {error}")
            shutil.rmtree(into, ignore_errors=True)
            log.error("SIGHUP: the new model cannot be served, model %s goes on serving: %s",
                      old.model_id, error)  # fmt: skip

    return reload


def _announce(args: argparse.Namespace) -> None:
    if not _is_loopback(args.host):
        print(f"Warning: binding {args.host} exposes the server beyond this machine.", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    port = args.port or "PORT"  # --port 0: the port the system picks, in uvicorn's line below
    print(f"Page at http://{shown}:{port}/  API docs at http://{shown}:{port}/docs",
          file=sys.stderr)  # fmt: skip


def run_workers(workers: int, common: dict[str, Any], drain_s: float = 0.0, watchdog_s: float = 10.0,
                reload: Any = None) -> int:
    """`workers` processes under fmnist's supervisor, each with a listening socket of its own."""
    import uvicorn

    from fmnist.serve.server import Supervisor

    config = uvicorn.Config("fmnist.serve.app:app_from_env", factory=True, workers=workers, **common)
    if hasattr(socket, "SO_REUSEPORT"):
        sock: socket.socket = bind_worker_socket(common["host"], common["port"])
        # the line uvicorn's own bind would log (with the port --port 0 got)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        logging.getLogger("uvicorn.error").info(f"Uvicorn running on http://{shown}:{port} (Press CTRL+C to quit)")
    else:  # Windows: one socket shared by the workers, as uvicorn makes it
        sock = config.bind_socket()
    try:
        return Supervisor(config, sock, workers, "fmnist.serve.app:app_from_env", drain_s=drain_s,
                          watchdog_s=watchdog_s, reload=reload).run()
    finally:
        sock.close()


class WorkerSocket(socket.socket):
    """The parent's listening socket, which every worker process re-creates as its own.

    uvicorn hands one socket to all its workers; the worker that wakes first accepts every
    connection waiting (asyncio accepts in a loop), so clients that connect together mostly land
    on one worker. Measured with wrk, 8 keep-alive clients, 2 workers, 2-core AMD EPYC (avx512):
    605-649 requests/s with all 8 on one worker, 1,312 when they were split. Pickled into a
    worker (multiprocessing's spawn), it becomes a new socket bound to the same address with
    SO_REUSEPORT, and the kernel spreads new connections over the workers' sockets by a hash of
    their addresses. The parent's socket only holds the address: it never listens.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return _reuseport_socket, (self.family, *self.getsockname()[:2])


def _reuseport_socket(family: int, host: str, port: int, cls: type = socket.socket) -> socket.socket:
    sock = cls(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # uvicorn's sockets have protocol 0, so asyncio would not turn Nagle's algorithm off on the
    # connections: a keep-alive client then waits for its own delayed ACK (~40 ms) on every
    # answer's second write (wrk, 1 client, 2 workers: 51 ms a request, 8 ms with this).
    # Linux passes it from the listening socket to every accepted one.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    return sock


def bind_worker_socket(host: str, port: int) -> WorkerSocket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        # A plain bind first: it fails when anything listens there, a second `fmnist serve`
        # included, which a bind with SO_REUSEPORT would quietly join instead.
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
            port = probe.getsockname()[1]  # --port 0: the one the system picked
        sock = _reuseport_socket(family, host, port, WorkerSocket)
    except OSError as e:
        raise ConfigError(f"Cannot listen on {host}:{port}: {e.strerror or e}.") from None
    assert isinstance(sock, WorkerSocket)
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str]) -> int:
    """`python -m fmnist.cli.serve SPEC`: what `fmnist serve` with several workers re-executes
    itself as (`become_supervisor`); SPEC is JSON {"workers", "common", "drain_s", "tmp"}."""
    from fmnist.errors import FmnistError

    try:
        return supervise(json.loads(argv[0]))
    except FmnistError as e:  # as fmnist.cli.main says it: one line
        print(f"fmnist: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
