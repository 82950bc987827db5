"""The README's picture of the page: `fmnist serve RUN` in headless Chromium, one test image
clicked.  python scripts/screenshot-page.py runs/latest docs/screenshot.png [--sample N]"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright


def wait_ready(url: str, deadline: float) -> None:
    """Worker processes listen only once they have loaded the model: until then, refused."""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("fmnist serve did not become ready in time")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="run folder or checkpoint to serve")
    p.add_argument("out", help="PNG to write")
    p.add_argument("--sample", type=int, default=7, help="which test image of the strip to click")
    args = p.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "fmnist", "serve", args.run, "--port", "0"],
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert server.stderr is not None
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            if not line and server.poll() is not None:
                raise SystemExit("fmnist serve exited before it was ready")
            if m := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line):
                url = m.group(1)
        if url is None:
            raise SystemExit("fmnist serve did not start in 120 s")
        wait_ready(url, deadline)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url + "/")
            page.wait_for_function("() => document.querySelectorAll('#strip .sample').length === 12")
            page.locator("#strip .sample").nth(args.sample).click()
            page.wait_for_function("() => document.querySelector('#source').textContent.startsWith('Test image')")
            page.wait_for_timeout(500)  # let the bars' transition finish
            page.screenshot(path=args.out)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
