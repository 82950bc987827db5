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
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist.errors import ImageError

# Bump when a change to this file changes what `preprocess` returns for some image: decoded
# image folders cached by an older version are then decoded again (fmnist.datasets.folder).
PREPROCESS_VERSION = 2

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
# The PNG chunks a picture needs; every other one is dropped before PIL reads the file. PIL
# inflates text (zTXt, iTXt) and ICC profiles (iCCP) as it opens a PNG, up to 1 MB a chunk and
# 64 MB a file: a 67 KB PNG of 64 such chunks cost 0.6 s of CPU before one pixel was decoded.
# Animation chunks go too: the first frame (IDAT) is what is classified. eXIf stays (rotation).
_PNG_KEEP = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"eXIf"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A progressive JPEG is decoded once per scan: a small file of thousands of scans costs seconds.
# Ordinary progressive files have about 10 (libjpeg's own default script: 10).
MAX_JPEG_SCANS = 100


def open_image(
    source: bytes | str | Path, *, max_pixels: int = MAX_PIXELS,
    check_size: Callable[[int, int], None] | None = None,
) -> Image.Image:  # fmt: skip
    """Decode an image file (PNG, JPEG, WebP, GIF's first frame, BMP, ...) fully, upright.

    Raises ImageError with one sentence naming the file (or "upload") for a missing file, a
    non-image, a corrupt or truncated image, or more than `max_pixels` pixels. `check_size`,
    if given, is called with the width and height before any pixel is decoded (a server's
    budget for a whole request): it raises to refuse the image.

    The work is bounded before it is done: a PNG's metadata chunks are dropped unread (see
    `_PNG_KEEP`), a JPEG of more than `MAX_JPEG_SCANS` scans is refused, and the pixel count
    is checked from the header.
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
    if data.startswith(_PNG_SIGNATURE):
        data = png_without_metadata(data)
    elif data.startswith(b"\xff\xd8") and data.count(b"\xff\xda") > MAX_JPEG_SCANS:
        # 0xFF 0xDA is a start-of-scan marker; inside compressed data 0xFF is always followed
        # by 0x00 or a restart marker, so this counts scans (and at worst a thumbnail's too)
        raise ImageError(
            f"{_cap(name)} is a JPEG of more than {MAX_JPEG_SCANS} scans: save it as an "
            "ordinary (baseline or progressive) JPEG."
        )
    try:
        img: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = img.size  # known from the header, before any pixel is decoded
    except Exception as e:
        raise _image_error(name, e) from e
    check_pixels(name, width, height, max_pixels)
    if check_size is not None:  # outside the try: what it raises is the caller's own
        check_size(width, height)
    try:
        img.load()  # decode everything here so a truncated file fails now, not later
        img = ImageOps.exif_transpose(img) or img
        # copy() detaches the first frame of an animation from its decoder
        img = img.copy()
    except Exception as e:
        raise _image_error(name, e) from e
    return img


def check_pixels(name: str, width: int, height: int, max_pixels: int = MAX_PIXELS) -> None:
    """ImageError if an image of `width` x `height` is over `max_pixels` (decompression bombs)."""
    if width * height > max_pixels:
        raise ImageError(
            f"{_cap(name)} is {width}x{height} pixels, more than the {max_pixels:,} accepted: "
            "resize it first."
        )


def png_without_metadata(data: bytes) -> bytes:
    """A PNG file with only the chunks in `_PNG_KEEP`: its picture, none of its metadata. The
    chunks are walked by their lengths (no CRC check, no inflating); a file that ends inside a
    chunk keeps its tail, so that PIL says it is truncated."""
    parts = [data[:8]]
    pos, end = 8, len(data)
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        stop = pos + 12 + length  # length, type, data, CRC
        if kind in _PNG_KEEP or stop > end:
            parts.append(data[pos:stop])
        pos = stop
        if kind == b"IEND":
            break
    parts.append(data[pos:])  # whatever follows IEND, or a partial chunk header
    return b"".join(parts)


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as an image file's first bytes declare them, read at fixed offsets
    without PIL (constant work, for a server's event loop); None when the format or its header
    is not one read here. A lie is caught later: `open_image` checks the size PIL finds."""
    try:
        if data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR":
            return struct.unpack_from(">II", data, 16)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack_from("<HH", data, 6)
        if data.startswith(b"BM"):
            header = struct.unpack_from("<I", data, 14)[0]
            if header == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
                return struct.unpack_from("<HH", data, 18)
            w, h = struct.unpack_from("<ii", data, 18)
            return abs(w), abs(h)
        if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg_size(data)
    except (struct.error, IndexError):  # too short for its own header
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    kind = data[12:16]
    if kind == b"VP8 ":
        w, h = struct.unpack_from("<HH", data, 26)
        return w & 0x3FFF, h & 0x3FFF
    if kind == b"VP8L":
        bits = struct.unpack_from("<I", data, 21)[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    return None


def _jpeg_size(data: bytes, max_segments: int = 64) -> tuple[int, int] | None:
    """The size in a JPEG's frame header (SOFn), found by jumping from segment to segment:
    at most `max_segments` jumps (ordinary files have fewer than 20 before it)."""
    pos = 2
    for _ in range(max_segments):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack_from(">HH", data, pos + 5)
            return w, h
        pos += 2 + length
    return None


def _image_error(name: str, e: Exception) -> ImageError:
    if isinstance(e, ImageError):
        return e
    if isinstance(e, UnidentifiedImageError):
        return ImageError(
            f"{_cap(name)} is not an image PIL can read (expected PNG, JPEG, WebP, GIF or BMP)."
        )
    if isinstance(e, Image.DecompressionBombError):
        return ImageError(f"{_cap(name)} has too many pixels to decode safely ({e}).")
    # PIL reports truncated and corrupt data through many types (OSError, SyntaxError,
    # ValueError, EOFError, NotImplementedError from plugins...): all mean "bad image".
    return ImageError(f"{_cap(name)} is a corrupt or truncated image ({e}).")


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
    if factor < 2:
        return image
    # reduce() averages pixel values: it refuses 1-bit and 16-bit images, and would average
    # a palette's indices, not its colours
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    elif image.mode.startswith("I;16"):
        image = image.convert("I")
    return image.reduce(factor)


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
