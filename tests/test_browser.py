"""The web page in a real browser: Debian's headless Chromium driven by Playwright, against
`fmnist serve` started on 127.0.0.1 with a model trained here on the real Fashion-MNIST.

`make test` installs Chromium first (scripts/ensure-browser.sh); without it these tests skip.
Screenshots go to test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
]  # fmt: skip

pytestmark = [
    pytest.mark.browser,
    pytest.mark.realdata,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} not found: run scripts/ensure-browser.sh (Debian's chromium via apt)",
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="Python playwright is not installed")


@pytest.fixture(scope="module")
def test_set() -> tuple[np.ndarray, np.ndarray]:
    from fmnist.datasets import load_arrays
    from fmnist.errors import DatasetError

    try:
        return load_arrays("fashion-mnist", "test")
    except DatasetError as e:
        pytest.skip(f"Fashion-MNIST not available: {e}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, test_set) -> Path:
    """A small MLP trained for a few seconds on the real training set (about 84 % test accuracy),
    calibrated on 5,000 training images it did not train on (fmnist.trust)."""
    from fmnist import trust
    from fmnist.checkpoint import FASHION_CLASSES, save_model
    from fmnist.datasets import load_arrays
    from fmnist.models import build_model

    images, labels = load_arrays("fashion-mnist", "train")
    held_images, held_labels = images[-5000:], labels[-5000:]
    images, labels = images[:-5000], labels[:-5000]
    mean, std = 0.286, 0.353
    x = torch.from_numpy(images)  # uint8 (N, 28, 28); each batch is normalised when drawn
    y = torch.from_numpy(labels)
    torch.manual_seed(0)
    model = build_model("mlp", {"hidden": 128})
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(300):
        idx = torch.randint(0, len(x), (128,))
        batch = ((x[idx].float() / 255 - mean) / std).unsqueeze(1)  # (B, 1, 28, 28)
        loss = torch.nn.functional.cross_entropy(model(batch), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test_images, test_labels = test_set
    with torch.no_grad():
        xt = ((torch.from_numpy(test_images).float() / 255 - mean) / std).unsqueeze(1)
        acc = (model(xt).argmax(1).numpy() == test_labels).mean()
        xh = ((torch.from_numpy(held_images).float() / 255 - mean) / std).unsqueeze(1)
        held_logits = model(xh).numpy()
    assert acc > 0.8, f"the quick model only reached {acc:.1%}"
    folder = tmp_path_factory.mktemp("trained")
    save_model(folder, model, {
        "classes": FASHION_CLASSES, "normalize": {"mean": mean, "std": std},
        "dataset": "fashion-mnist", "metrics": {"test_accuracy": float(acc)}, "epoch": 1,
        "trust": trust.fit(held_logits, held_labels),
    })  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def server(trained: Path) -> Iterator[str]:
    """`fmnist serve` on 127.0.0.1, on a free port the server picks; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fmnist", "serve", str(trained), "--port", "0", "--log-level", "info"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stderr is not None
    log: list[str] = []
    url = None
    deadline = time.monotonic() + 180  # torch, the ONNX export and warm-up, on 2 busy cores
    while url is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        log.append(line)
        if m := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line):
            url = m.group(1)
    if url is None:
        proc.kill()
        pytest.fail("fmnist serve did not start:\n" + "".join(log))
    # keep draining the log so the server never blocks on a full pipe
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
    # worker processes (--workers auto) listen only once they have loaded the model
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("fmnist serve never became ready:\n" + "".join(log))
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert not any("Traceback" in line for line in log), "".join(log)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server: str) -> Iterator:
    """A fresh page on the server that records console errors, failed and outside requests."""
    context = browser.new_context(viewport={"width": 1280, "height": 860}, device_scale_factor=1)
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
    pg.on("request", lambda r: r.url.startswith(("http", "ws")) and not r.url.startswith(server)
          and problems.append(f"outside request: {r.url}"))  # fmt: skip
    pg.problems = problems
    yield pg
    context.close()
    assert problems == []


def probabilities(pg) -> dict[str, float]:
    return dict(pg.eval_on_selector_all("#probs li", "els => els.map(e => [e.dataset.class, +e.dataset.p])"))


def wait_for_new_probabilities(pg, before: dict[str, float], timeout: float = 10_000) -> dict[str, float]:
    pg.wait_for_function(
        """before => {
            const now = Object.fromEntries([...document.querySelectorAll('#probs li')]
                .map(e => [e.dataset.class, +e.dataset.p]));
            return Object.keys(now).some(k => Math.abs(now[k] - (before[k] ?? 0)) > 1e-4);
        }""",
        arg=before,
        timeout=timeout,
    )
    return probabilities(pg)


def draw(pg, points: list[tuple[float, float]], *, steps: int = 6, pause_ms: int = 0) -> None:
    """Drag the mouse through `points` (fractions of the pad) with the button held."""
    box = pg.locator("#pad").bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    pg.mouse.move(*xy[0])
    pg.mouse.down()
    for x, y in xy[1:]:
        pg.mouse.move(x, y, steps=steps)
        if pause_ms:
            pg.wait_for_timeout(pause_ms)


def pick_upload_image(trained: Path, test_set, tmp_path: Path) -> tuple[Path, str]:
    """A real test image (as a PNG file) that the trained model gets right with confidence,
    from a class other than the one the page shows first."""
    from fmnist.images import open_image
    from fmnist.predict import Predictor

    predictor = Predictor.from_checkpoint(trained)
    images, labels = test_set
    for i in range(200):
        path = tmp_path / f"test-{i}-{predictor.classes[labels[i]].replace('/', '-')}.png"
        Image.fromarray(images[i]).save(path)
        p = predictor.predict([open_image(path)])[0]
        if p.index == labels[i] and p.probabilities[p.label] > 0.9 and p.label in ("Trouser", "Bag", "Sandal"):
            return path, p.label
    pytest.fail("no confidently classified test image among the first 200")


def test_page_end_to_end(page, server: str, trained: Path, test_set, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(server + "/")

    # the model is announced and the strip of real test images loads, the first one shown
    page.wait_for_function("() => document.querySelector('#model-name').textContent.includes('mlp')")
    page.wait_for_function("() => document.querySelectorAll('#strip .sample').length === 12")
    page.wait_for_function("() => document.querySelector('#pred-label').textContent !== '—'")
    assert page.locator("#seen").get_attribute("src").startswith("data:image/png;base64,")

    # clicking a test image shows its prediction and whether it matches the true label
    sample = page.locator("#strip .sample").nth(3)
    true_label = sample.get_attribute("data-label")
    before = probabilities(page)
    sample.click()
    after = wait_for_new_probabilities(page, before)
    assert page.locator("#source").text_content().endswith(true_label)
    assert page.locator("#truth").is_visible()
    assert sum(after.values()) == pytest.approx(1.0, abs=1e-3)

    # drawing: probabilities update while the stroke is still being drawn (debounced) ...
    page.click("#clear")
    assert page.locator("#pred-label").text_content() == "—"
    cleared = probabilities(page)
    assert set(cleared.values()) == {0.0}
    draw(page, [(0.35, 0.15), (0.3, 0.85)], steps=8, pause_ms=400)
    live = wait_for_new_probabilities(page, cleared)  # the mouse button is still down here
    draw_more = [(0.35, 0.15), (0.65, 0.15), (0.7, 0.85)]
    draw(page, draw_more, steps=8, pause_ms=150)
    page.mouse.up()
    # ... and again once the drawing changes
    drawn = wait_for_new_probabilities(page, live)
    assert drawn != live and sum(drawn.values()) == pytest.approx(1.0, abs=1e-3)
    assert page.locator("#source").text_content() == "Your drawing"
    assert page.locator("#seen").is_visible()
    page.screenshot(path=str(ARTIFACTS / "browser-drawing.png"))

    # uploading a real test image through the file picker shows the right class
    path, label = pick_upload_image(trained, test_set, tmp_path)
    before = probabilities(page)
    page.set_input_files("#file", str(path))
    page.wait_for_function(
        "label => document.querySelector('#pred-label').textContent === label", arg=label, timeout=10_000
    )
    final = wait_for_new_probabilities(page, before)
    assert max(final, key=final.get) == label and final[label] > 0.9
    assert page.locator("#source").text_content() == path.name
    assert page.locator("#probs li.top").get_attribute("data-class") == label
    page.wait_for_timeout(350)  # let the bar transition finish before the picture
    page.screenshot(path=str(ARTIFACTS / "browser.png"), full_page=True)


def test_the_page_says_not_recognised_and_shows_a_set_of_likely_classes(
    page, server: str, trained: Path, test_set, tmp_path: Path
) -> None:
    from fmnist.images import open_image
    from fmnist.predict import Predictor

    predictor = Predictor.from_checkpoint(trained)
    page.goto(server + "/")
    page.wait_for_function("() => document.querySelector('#pred-label').textContent !== '—'")

    # a checkerboard is no piece of clothing: the top class is still shown, and marked
    board = (np.indices((28, 28)).sum(axis=0) // 4 % 2 * 255).astype(np.uint8)
    Image.fromarray(board).resize((280, 280), Image.Resampling.NEAREST).save(tmp_path / "board.png")
    assert predictor.predict([open_image(tmp_path / "board.png")])[0].recognised is False
    page.set_input_files("#file", str(tmp_path / "board.png"))
    page.wait_for_selector("#pred-ood:not([hidden])", timeout=10_000)
    assert page.locator("#pred-ood").text_content() == "This does not look like any of the 10 classes"
    assert page.locator("#pred-label").text_content() != "—"
    page.screenshot(path=str(ARTIFACTS / "browser-not-recognised.png"))

    # a test image the model is unsure about: the classes that likely hold the true one
    images, _ = test_set
    for i in range(500):
        p = predictor.predict([images[i]])[0]
        if p.recognised and p.set is not None and len(p.set) >= 2:
            break
    else:
        pytest.fail("no test image among the first 500 has a set of two classes or more")
    Image.fromarray(images[i]).save(tmp_path / "unsure.png")
    page.set_input_files("#file", str(tmp_path / "unsure.png"))
    page.wait_for_selector("#pred-set:not([hidden])", timeout=10_000)
    assert page.locator("#pred-set").text_content() == f"One of: {' or '.join(p.set)} (90% of the time)"
    assert page.locator("#pred-ood").is_hidden()


def test_api_reference_renders_offline(page, server: str) -> None:
    page.goto(server + "/docs")
    page.wait_for_selector(".op")
    paths = page.eval_on_selector_all(".op .path", "els => els.map(e => e.textContent)")
    assert {"/v1/predict", "/v1/model", "/v1/samples", "/healthz", "/readyz"} <= set(paths)
    assert "127.0.0.1" in page.locator("pre").first.text_content()  # examples name this server


def test_bad_upload_shows_the_error(page, server: str, tmp_path: Path) -> None:
    page.goto(server + "/")
    page.wait_for_function("() => document.querySelectorAll('#strip .sample').length === 12")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#toast:not([hidden])")
    assert "broken.png" in page.locator("#toast").text_content()
    # the browser logs the 422 response as a console error: that one is expected
    page.problems[:] = [p for p in page.problems if "422" not in p]
    assert json.loads(page.evaluate("fetch('/healthz').then(r => r.text())")) == {"status": "ok"}
