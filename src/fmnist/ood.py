"""Images that are not clothing, for checking that a model says "not recognised": pictures made
here (noise, blank pages, shapes, text, gradients, checkerboards), scikit-learn's bundled
handwritten digits, a folder of image files, or another dataset's test split.

Everything goes through `fmnist.images.preprocess`, as an uploaded picture does, so the model sees
what `fmnist predict` and the server would give it. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fmnist.errors import ConfigError, ImageError
from fmnist.images import DEFAULT_BOX, open_image, preprocess

CANVAS = 64  # drawn at this size, then preprocessed to 28x28 like any upload
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))  # type: ignore[return-value]


def _noise(rng: np.random.Generator) -> Image.Image:
    if rng.random() < 0.5:  # grey or colour noise
        pixels = rng.integers(0, 256, (CANVAS, CANVAS), dtype=np.uint8)
        return Image.fromarray(pixels, mode="L")
    return Image.fromarray(rng.integers(0, 256, (CANVAS, CANVAS, 3), dtype=np.uint8), mode="RGB")


def _blank(rng: np.random.Generator) -> Image.Image:
    # a page of one colour, with a camera's faint noise
    base = np.array(_colour(rng), dtype=np.float32)
    pixels = base + rng.normal(0, 3, (CANVAS, CANVAS, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def _shapes(rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", (CANVAS, CANVAS), _colour(rng))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = (int(v) for v in rng.integers(0, CANVAS - 16, 2))
        x1, y1 = x0 + int(rng.integers(12, CANVAS - x0)), y0 + int(rng.integers(12, CANVAS - y0))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=_colour(rng))
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=_colour(rng))
        else:
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=_colour(rng))
    return image


def _text(rng: np.random.Generator) -> Image.Image:
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZabdefghkmnqrtuy0123456789?&%@"
    word = "".join(rng.choice(list(letters), int(rng.integers(1, 5))))
    image = Image.new("RGB", (CANVAS, CANVAS), (255, 255, 255))
    font = ImageFont.load_default(size=int(rng.integers(18, 40)))
    ImageDraw.Draw(image).text((4, int(rng.integers(0, 24))), word, fill=(0, 0, 0), font=font)
    return image


def _gradients(rng: np.random.Generator) -> Image.Image:
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS] / (CANVAS - 1)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(1e-6, float(np.ptp(t)))
    a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    pixels = a + t[..., None] * (b - a)
    return Image.fromarray(pixels.astype(np.uint8), mode="RGB")


def _checkerboards(rng: np.random.Generator) -> Image.Image:
    cell = int(rng.integers(2, 17))
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS] // cell
    on = ((yy + xx) % 2).astype(bool)
    if rng.random() < 0.5:
        a, b = np.array([0, 0, 0]), np.array([255, 255, 255])  # black and white
    else:
        a, b = np.array(_colour(rng)), np.array(_colour(rng))
    pixels = np.where(on[..., None], a, b).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


DRAWN: dict[str, Callable[[np.random.Generator], Image.Image]] = {
    "noise": _noise, "blank": _blank, "shapes": _shapes, "text": _text,
    "gradients": _gradients, "checkerboards": _checkerboards,
}  # fmt: skip


def drawn(kind: str, n: int = 200, *, seed: int = 0, box: int = DEFAULT_BOX) -> np.ndarray:
    """`n` pictures of one kind (see DRAWN), preprocessed: uint8 (n, 28, 28). Seeded: the same
    pictures every time."""
    if kind not in DRAWN:
        raise ConfigError(f"Unknown kind of picture '{kind}'. Valid: {', '.join(DRAWN)}.")
    rng = np.random.default_rng([seed, list(DRAWN).index(kind)])
    return np.stack([preprocess(DRAWN[kind](rng), box=box) for _ in range(n)])


def digits(*, box: int = DEFAULT_BOX, limit: int | None = None) -> np.ndarray:
    """scikit-learn's 1,797 bundled 8x8 handwritten digits (the first `limit` of them), enlarged
    and preprocessed like an upload: uint8 (N, 28, 28)."""
    raw = bundled_digits()[:limit]  # (N, 8, 8) ink 0..16
    out = []
    for d in raw:
        small = Image.fromarray((d * (255 / 16)).astype(np.uint8), mode="L")
        out.append(preprocess(small.resize((56, 56), Image.Resampling.BILINEAR), box=box))
    return np.stack(out)


def bundled_digits() -> np.ndarray:
    """scikit-learn's digits (N, 8, 8), read from the file it ships without importing it:
    `import sklearn` loads scipy.stats, which every calibrated `fmnist train` paid for in its
    model card (2.4 s before, 1.0 s after, on a 2-core avx2 EPYC:
    benchmarks/results/2026-12-07-amd-epyc-2c-phases.jsonl). The file is the one `load_digits` reads; a layout without it goes through
    `load_digits`."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    if spec is None:
        raise ConfigError("The digits need scikit-learn (it ships them): pip install scikit-learn.")
    for folder in spec.submodule_search_locations or []:
        shipped = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if shipped.is_file():
            rows = np.loadtxt(shipped, delimiter=",")  # 64 pixels, then the digit
            return rows[:, :-1].reshape(-1, 8, 8)
    from sklearn.datasets import load_digits

    images: np.ndarray = load_digits().images
    return images


def folder_images(folder: Path, *, box: int = DEFAULT_BOX) -> np.ndarray:
    """The image files directly inside `folder` (sorted), preprocessed; unreadable ones skipped."""
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    arrays = []
    for f in files:
        try:
            arrays.append(preprocess(open_image(f), box=box))
        except ImageError:
            continue
    if not arrays:
        raise ConfigError(f"Folder {folder} has no readable image files ({', '.join(IMAGE_SUFFIXES)}).")
    return np.stack(arrays)


def load_ood(source: str, *, box: int = DEFAULT_BOX, data_dir: str | Path | None = None) -> np.ndarray:
    """The images `--ood SOURCE` names: `digits`, `drawn` (every kind), one kind of drawn
    picture, a folder of image files, or a dataset's test split (`mnist`, `csv:...`)."""
    if source == "digits":
        return digits(box=box)
    if source == "drawn":
        return np.concatenate([drawn(k, box=box) for k in DRAWN])
    if source in DRAWN:
        return drawn(source, box=box)
    path = Path(source)
    if path.is_dir() and not source.startswith(("folder:", "csv:")):
        return folder_images(path, box=box)
    from fmnist.datasets import load_arrays

    try:
        images, _ = load_arrays(source, "test", data_dir)
    except ConfigError as e:
        raise ConfigError(
            f"{e} (--ood takes digits, drawn, {', '.join(DRAWN)}, a folder of images or a "
            "dataset name)"
        ) from None
    return np.asarray(images)
