"""`fmnist tensorboard [RUNS_DIR]`: TensorBoard on the runs' event files (every run folder
is a TensorBoard run), on 127.0.0.1 by default."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from fmnist.cli.common import add_command, run_path
from fmnist.errors import ConfigError


def add_parser(sub: Any) -> None:
    p = add_command(sub, "tensorboard", "open TensorBoard on the runs (default runs/)")
    p.add_argument("runs_dir", nargs="?", default="runs", metavar="RUNS_DIR",
                   help="folder of run folders, or one run folder (default runs)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=6006, help="port (default 6006)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fmnist.tensorboard import available

    args.runs_dir = run_path(args.runs_dir)  # one run, named as `fmnist runs` lists it
    if not Path(args.runs_dir).is_dir():
        raise ConfigError(f"Runs folder {args.runs_dir} does not exist: train a run first "
                          "(`fmnist train`), or name the folder that holds them.")
    if not available():
        raise ConfigError("TensorBoard is not installed: pip install tensorboard (in a clone: "
                          "pip install -e '.[tensorboard]', or make setup).")
    print(f"TensorBoard on http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    return subprocess.call([sys.executable, "-m", "tensorboard.main",
                            *logdir_args(Path(args.runs_dir)),
                            "--host", args.host, "--port", str(args.port)])


def logdir_args(root: Path) -> list[str]:
    """`--logdir ROOT`; but TensorBoard follows the `runs/latest` link and would show that run
    twice, so where it exists, each run folder by name (runs started later then need a
    restart to appear)."""
    if not (root / "latest").is_symlink():
        return ["--logdir", str(root)]
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()
                     and not p.name.startswith("."))
    return ["--logdir_spec", ",".join(f"{p.name}:{p}" for p in folders)]
