"""Turning arbitrary image files into model inputs: one path shared by image folders
(fmnist.datasets.folder), `fmnist predict`, the Python API and the HTTP server.

    open_image(bytes | path)  ->  PIL image (decoded, EXIF-rotated, size-checked)
    preprocess(image)         ->  uint8 (28, 28), light object on black, like Fashion-MNIST

Preprocessing follows Fashion-MNIST's own preparation (trim, longest edge to 28, centre, negate):

1. grayscale; transparent pixels are composited on a background that contrasts with the object
   (black behind light objects, white behind dark ones), so a cut-out on alpha stays visible;
2. if the border is light (median of the outermost pixel ring > 127), invert, so the background
   becomes dark; then the border level is mapped to 0 (a linear "levels" stretch that keeps 255),
   so an off-white photo background becomes black rather than dark grey;
3. crop to the bounding box of pixels brighter than 5 % of full scale;
4. resize so the longest edge is `box` pixels (28 for Fashion-MNIST, whose items touch the edges;
   20 for MNIST, whose digits sit in a 20x20 box), keeping the aspect ratio (Lanczos);
5. paste centred on a 28x28 black canvas.

A 28x28 light-on-dark image whose object already spans the box comes out unchanged.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist.errors import ImageError

# Bump when a change to this file changes what `preprocess` returns for some image: decoded
# image folders cached by an older version are then decoded again (fmnist.datasets.folder).
PREPROCESS_VERSION = 1

# Decompression-bomb guard: a 100 KB PNG can declare 50000x50000 pixels (10 GB decoded).
MAX_PIXELS = 40_000_000
SIZE = 28
# Longest edge of the object inside the 28x28 frame, per dataset (default: Fashion-MNIST's 28).
BOX_SIZE = {"mnist": 20}
DEFAULT_BOX = 28
# Pixels at most this bright (after inversion and levels) count as background when cropping.
_OBJECT_THRESHOLD = 0.05 * 255
# Very large images are shrunk (box filter, cheap) before the float work; 1024 px is far more
# than a 28 px output needs and keeps memory at a few MB.
_WORK_SIZE = 1024
# The formats we promise; other PIL plugins (DDS, PSD, ...) are more attack surface than use.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
# A file larger than this is not read at all (the largest sensible photo is far smaller).
MAX_FILE_BYTES = 50 * 1024 * 1024


def open_image(source: bytes | str | Path, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file (PNG, JPEG, WebP, GIF's first frame, BMP, ...) fully, upright.

    Raises ImageError with one sentence naming the file (or "upload") for a missing file, a
    non-image, a corrupt or truncated image, or more than `max_pixels` pixels.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        name, data = "upload", bytes(source)
    else:
        name = str(source)
        path = Path(source)
        try:
            if path.exists() and not path.is_dir() and not path.is_file():
                raise ImageError(f"{name} is not a regular file (a device or pipe?), not an image.")
            if path.is_file() and path.stat().st_size > MAX_FILE_BYTES:
                raise ImageError(
                    f"{name} is larger than {MAX_FILE_BYTES // 2**20} MiB: not accepted as an image."
                )
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageError(f"Image file {name} does not exist.") from None
        except IsADirectoryError:
            raise ImageError(f"{name} is a folder, not an image file.") from None
        except OSError as e:
            raise ImageError(f"Cannot read {name}: {e.strerror or e}.") from e
    if not data:
        raise ImageError(f"{_cap(name)} is empty, not an image.")
    try:
        img: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = img.size  # known from the header, before any pixel is decoded
        if width * height > max_pixels:
            raise ImageError(
                f"{_cap(name)} is {width}x{height} pixels, more than the {max_pixels:,} accepted: "
                "resize it first."
            )
        img.load()  # decode everything here so a truncated file fails now, not later
        img = ImageOps.exif_transpose(img) or img
        # copy() detaches the first frame of an animation from its decoder
        img = img.copy()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(
            f"{_cap(name)} is not an image PIL can read (expected PNG, JPEG, WebP, GIF or BMP)."
        ) from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{_cap(name)} has too many pixels to decode safely ({e}).") from e
    except Exception as e:
        # PIL reports truncated and corrupt data through many types (OSError, SyntaxError,
        # ValueError, EOFError, NotImplementedError from plugins...): all mean "bad image".
        raise ImageError(f"{_cap(name)} is a corrupt or truncated image ({e}).") from e
    return img


def _cap(name: str) -> str:
    return "The upload" if name == "upload" else name


def _gray(image: Image.Image) -> np.ndarray:
    """float32 (H, W) in [0, 255]; transparency composited on a contrasting background."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        la = np.asarray(image.convert("LA"), dtype=np.float32)
        lum, alpha = la[..., 0], la[..., 1] / 255.0
        if alpha.min() >= 1.0:
            return lum
        weight = alpha.sum()
        object_lum = float((lum * alpha).sum() / weight) if weight > 0 else 0.0
        background = 0.0 if object_lum > 127.5 else 255.0
        return lum * alpha + background * (1.0 - alpha)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of letting convert("L") clip
        arr = np.asarray(image, dtype=np.float32)
        top = float(arr.max())
        return arr * (255.0 / top) if top > 255 else arr
    return np.asarray(image.convert("L"), dtype=np.float32)


def _shrink(image: Image.Image) -> Image.Image:
    factor = max(image.size) // _WORK_SIZE
    if factor >= 2:
        return image.reduce(factor)
    return image


def preprocess(image: Image.Image, *, box: int = DEFAULT_BOX) -> np.ndarray:
    """Any PIL image -> uint8 (28, 28): light object centred on black (see the module docs)."""
    if not 1 <= box <= SIZE:
        raise ValueError(f"box must be in 1..{SIZE}, got {box}")
    gray = _gray(_shrink(image))  # (H, W) float32
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    level = float(np.median(border))
    if level > 127.5:  # light background: Fashion-MNIST items are light on black
        gray = 255.0 - gray
        level = 255.0 - level
    if level > 0:
        gray = (gray - level) * (255.0 / (255.0 - level))
    gray = np.clip(gray, 0.0, 255.0)

    rows = np.flatnonzero((gray > _OBJECT_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((gray > _OBJECT_THRESHOLD).any(axis=0))
    if rows.size:  # a blank image keeps its whole frame
        gray = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    h, w = gray.shape
    scale = box / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if (new_w, new_h) != (w, h):
        resized = Image.fromarray(gray, mode="F").resize((new_w, new_h), Image.Resampling.LANCZOS)
        gray = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 255.0)

    out = np.zeros((SIZE, SIZE), dtype=np.uint8)
    # an odd margin puts the extra pixel before the object, as Fashion-MNIST's own files do
    top, left = (SIZE - new_h + 1) // 2, (SIZE - new_w + 1) // 2
    out[top : top + new_h, left : left + new_w] = np.rint(gray).astype(np.uint8)
    return out
