"""Screenshot TensorBoard showing the runs in RUNS_DIR, for the README: starts `tensorboard`
on 127.0.0.1 in the background and drives Debian's headless Chromium with Playwright (as the
browser tests do; nothing is downloaded).

    .venv/bin/python scripts/tensorboard_screenshot.py RUNS_DIR docs/tensorboard.png \
        --toggle hparam train --height 1150    # what the README shows
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("runs_dir")
    p.add_argument("out")
    p.add_argument("--tab", default="scalars", help="scalars, images, hparams, graphs, ...")
    p.add_argument("--toggle", nargs="*", default=[],
                   help="tag groups to fold or unfold (e.g. hparam train)")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=900)
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    from fmnist.cli.tensorboard import logdir_args  # as `fmnist tensorboard` runs it

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main",
                               *logdir_args(Path(args.runs_dir)),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(url + "data/runs", 60)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(f"{url}#{args.tab}")
            page.wait_for_load_state("networkidle")
            time.sleep(3)
            for group in args.toggle:  # a tag group's header folds or unfolds it
                page.get_by_text(group, exact=True).first.click(timeout=10_000)
            time.sleep(6)  # charts draw after their data arrives
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out)
            browser.close()
    finally:
        server.terminate()
        server.wait(10)
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
