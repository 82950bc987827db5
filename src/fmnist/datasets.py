"""The data layer: dataset specs, finding/fetching/verifying the files, IDX parsing, the
decoded-array cache, and a torchvision-compatible `Dataset`.

Files are looked for in this order, stopping at the first copy that verifies:

1. `data_dir` (the CLI's `--data-dir`) or `$FMNIST_DATA_DIR`;
2. the user cache (`$FMNIST_CACHE_DIR`, else platformdirs' user cache dir for "fmnist");
3. Debian's `/usr/share/datasets/<name>/` (package `dataset-fashion-mnist`);
4. a download from the spec's mirrors into the cache.

Verification hashes the *decompressed* bytes: Debian re-compresses the upstream `.gz` files, so a
hash of the `.gz` bytes would reject a perfectly good copy. Hashing 30 MB on every load would be
slow, so a small record in the cache remembers each file's digest keyed by (path, size, mtime):
an unchanged file is trusted, a changed one is hashed again. Decoded arrays are cached as `.npy`
keyed by that digest, so a warm `load_arrays` is a couple of `np.load` calls.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fmnist.atomic import as_write_error, write_bytes, write_text
from fmnist.errors import ConfigError, DatasetError, WriteError

log = logging.getLogger(__name__)

# Patchable so tests can point the Debian source at a temp dir.
DEBIAN_ROOT = Path("/usr/share/datasets")

SPLITS = ("train", "test")
KINDS = ("images", "labels")


# --------------------------------------------------------------------------------------------
# Specs


@dataclass(frozen=True)
class DataFile:
    """One of a dataset's four IDX files.

    `sha256` is of the decompressed bytes, so every source (raw file, upstream `.gz`, Debian's
    re-compressed `.gz`) passes the same check. Where no such hash is published, `gz_md5` (the
    md5 of the official `.gz`) verifies downloads and `.gz` copies; an uncompressed copy then
    passes on its IDX structure alone and is reported as unverified.
    """

    name: str  # the decompressed file name; "<name>.gz" is accepted too
    sha256: str | None = None
    gz_md5: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str, ...]
    files: tuple[tuple[str, DataFile], ...]  # ("train-images", DataFile), ... (hashable)
    mirrors: tuple[str, ...] = ()  # base URLs ending in "/"
    title: str = ""
    folder: str = ""  # torchvision's folder under `root`, e.g. "FashionMNIST"
    debian_package: str | None = None
    image_shape: tuple[int, int] = (28, 28)

    def file(self, split: str, kind: str) -> DataFile:
        return dict(self.files)[f"{split}-{kind}"]

    @property
    def display(self) -> str:
        return self.title or self.name


def _files(prefix: str = "", **hashes: tuple[str | None, str | None]) -> tuple:
    names = {
        "train_images": "train-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }
    return tuple(
        (key.replace("_", "-"), DataFile(prefix + names[key], sha256=sha, gz_md5=md5))
        for key, (sha, md5) in hashes.items()
    )


SPECS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST",
        folder="FashionMNIST",
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        # sha256 of the decompressed files, computed from Debian's dataset-fashion-mnist.
        files=_files(
            train_images=("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", None),
            train_labels=("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", None),
            test_images=("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", None),
            test_labels=("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", None),
        ),
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        debian_package="dataset-fashion-mnist",
    ),
    # No published sha256 of the *decompressed* MNIST/KMNIST files could be found offline, and
    # inventing one is not an option: these specs carry the md5 of the official .gz files
    # (the values torchvision and many others publish) and verify downloads with that.
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST",
        folder="MNIST",
        classes=(
            "0 - zero",
            "1 - one",
            "2 - two",
            "3 - three",
            "4 - four",
            "5 - five",
            "6 - six",
            "7 - seven",
            "8 - eight",
            "9 - nine",
        ),
        files=_files(
            train_images=(None, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            train_labels=(None, "d53e105ee54ea40749a09fcbcd1e9432"),
            test_images=(None, "9fb629c4189551a2d022fa330f9573f3"),
            test_labels=(None, "ec29112dd5afa0611ce80d1b7f02629c"),
        ),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        title="Kuzushiji-MNIST",
        folder="KMNIST",
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        files=_files(
            train_images=(None, "bdb82020997e1d708af4cf47b453dcf7"),
            train_labels=(None, "e144d726b3acfaa3e44228e80efcd344"),
            test_images=(None, "5c965bf0a639b31b8f53240b1b52f4d7"),
            test_labels=(None, "7320c461ea6c1c855c0b718fb2a4b134"),
        ),
        mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    ),
}

DEFAULT_DATASET = "fashion-mnist"


def get_spec(name: str) -> DatasetSpec:
    try:
        return SPECS[name]
    except KeyError:
        valid = ", ".join(sorted(SPECS))
        raise ConfigError(f"Unknown dataset {name!r}; valid names are: {valid}.") from None


def cache_dir() -> Path:
    """Where downloads, the verification record and decoded arrays live."""
    env = os.environ.get("FMNIST_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("fmnist"))


# --------------------------------------------------------------------------------------------
# Reading and parsing IDX files

_GZIP_MAGIC = b"\x1f\x8b"
# IDX element type codes -> big-endian numpy dtypes.
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _corrupt(path: Path, problem: str) -> DatasetError:
    return DatasetError(
        f"Dataset file {path} {problem}; delete or replace it "
        "(`fmnist data fetch` gets a fresh verified copy)."
    )


def read_payload(path: str | Path) -> bytes:
    """The file's IDX bytes, gunzipped when it is a `.gz` (by name or by content)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"Cannot read dataset file {path}: {e.strerror or e}.") from e
    return _gunzip(raw, path)


def _gunzip(raw: bytes, path: Path) -> bytes:
    if raw[:2] != _GZIP_MAGIC:
        if path.suffix == ".gz":
            raise _corrupt(path, "is named .gz but is not gzip data")
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise _corrupt(path, f"is a corrupt gzip file ({e})") from e


def parse_idx(data: bytes, path: str | Path) -> np.ndarray:
    """Parse IDX bytes into an array, checking the header against the bytes present.

    `path` is only used to name the file in errors.
    """
    path = Path(path)
    if len(data) < 4:
        raise _corrupt(path, f"is too short for an IDX header ({len(data)} bytes)")
    zero, code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0:
        magic = int.from_bytes(data[:4], "big")
        raise _corrupt(path, f"has a bad magic number 0x{magic:08X} (not an IDX file)")
    if code not in _IDX_DTYPES:
        raise _corrupt(path, f"has an unknown IDX element type code 0x{code:02X}")
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise _corrupt(path, f"has a truncated IDX header ({ndim} dimensions, {len(data)} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    present = len(data) - header
    if present < expected:
        raise _corrupt(
            path,
            f"is truncated: its header declares shape {dims} ({expected} bytes) "
            f"but only {present} bytes follow",
        )
    if present > expected:
        raise _corrupt(
            path,
            f"has {present - expected} unexpected bytes after the {expected} bytes "
            f"its header declares (shape {dims})",
        )
    arr = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def _check_array(arr: np.ndarray, kind: str, spec: DatasetSpec, path: Path) -> np.ndarray:
    """Check a parsed images/labels array against what the spec says it must be."""
    if arr.dtype != np.uint8:
        raise _corrupt(path, f"has element type {arr.dtype}, expected unsigned bytes (code 0x08)")
    want_ndim = 3 if kind == "images" else 1
    if arr.ndim != want_ndim:
        raise _corrupt(path, f"has {arr.ndim} dimensions, expected {want_ndim} for {kind}")
    if kind == "images" and arr.shape[1:] != spec.image_shape:
        h, w = spec.image_shape
        raise _corrupt(path, f"holds {arr.shape[1]}x{arr.shape[2]} images, expected {h}x{w}")
    if kind == "labels" and arr.size and int(arr.max()) >= len(spec.classes):
        raise _corrupt(
            path,
            f"has label {int(arr.max())}, out of range for {len(spec.classes)} classes",
        )
    return arr


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or gzipped) into a native-endian array."""
    return parse_idx(read_payload(path), path)


# --------------------------------------------------------------------------------------------
# The verification record


@dataclass(frozen=True)
class _Digest:
    sha256: str | None  # of the decompressed bytes; None when unreadable
    md5: str | None  # of the bytes on disk
    error: str | None = None


def _record_path() -> Path:
    return cache_dir() / "verified.json"


def _load_record() -> dict[str, Any]:
    try:
        return json.loads(_record_path().read_text())
    except (OSError, ValueError):
        return {}


def _save_record(record: dict[str, Any]) -> None:
    # The record only saves time; failing to write it (read-only cache) must not fail a load.
    with contextlib.suppress(WriteError, OSError):
        write_text(_record_path(), json.dumps(record, indent=0, sort_keys=True), "record")


def _digest(path: Path, record: dict[str, Any]) -> tuple[_Digest, bool]:
    """Digest of `path`, from the record when size and mtime are unchanged.

    Returns (digest, record_changed).
    """
    try:
        st = path.stat()
    except OSError as e:
        return _Digest(None, None, error=f"cannot be read ({e.strerror or e})"), False
    key = str(path.resolve())
    entry = record.get(key)
    if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return _Digest(entry.get("sha256"), entry.get("md5"), entry.get("error")), False
    try:
        raw = path.read_bytes()
    except OSError as e:
        return _Digest(None, None, error=f"cannot be read ({e.strerror or e})"), False
    raw_md5 = hashlib.md5(raw, usedforsecurity=False).hexdigest()
    try:
        digest = _Digest(hashlib.sha256(_gunzip(raw, path)).hexdigest(), raw_md5)
    except DatasetError as e:
        digest = _Digest(None, raw_md5, error=str(e))
    record[key] = {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": digest.sha256,
        "md5": digest.md5,
        "error": digest.error,
    }
    return digest, True


def _check_digest(path: Path, want: DataFile, digest: _Digest) -> tuple[str | None, bool]:
    """Return (problem, verified): problem is None when the copy is acceptable."""
    if digest.error:
        return digest.error, False
    if want.sha256:
        if digest.sha256 != want.sha256:
            return (
                f"sha256 of its decompressed bytes is {(digest.sha256 or '?')[:12]}..., "
                f"expected {want.sha256[:12]}... (wrong or corrupt file)",
                False,
            )
        return None, True
    if want.gz_md5 and path.suffix == ".gz":
        if digest.md5 != want.gz_md5:
            return f"md5 is {digest.md5}, expected {want.gz_md5} (wrong or corrupt file)", False
        return None, True
    # An uncompressed copy of a dataset with only a .gz md5 on record: nothing to hash against;
    # the IDX checks at decode time still apply.
    return None, False


# --------------------------------------------------------------------------------------------
# Finding the files


@dataclass(frozen=True)
class FoundFile:
    key: str  # "train-images", ...
    path: Path
    source: str  # "data-dir", "cache", "debian", "download"
    sha256: str  # of the decompressed bytes
    verified: bool  # False only for an uncompressed copy with no sha256 on record


@dataclass
class Location:
    spec: DatasetSpec
    files: dict[str, FoundFile] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        kinds = sorted({f.source for f in self.files.values()})
        return kinds[0] if len(kinds) == 1 else "mixed (" + ", ".join(kinds) + ")"

    @property
    def fingerprint(self) -> str:
        """sha256 over the files' decompressed-content hashes: the same data gives the same
        fingerprint whatever source or compression it came from. It covers the files this
        Location holds (in the spec's order): all four for a whole dataset, the two of a split
        for what `load_arrays` locates."""
        lines = "".join(f"{k} {self.files[k].sha256}\n" for k, _ in self.spec.files
                        if k in self.files)
        return hashlib.sha256(lines.encode()).hexdigest()


def _candidates(directory: Path, name: str) -> list[Path]:
    # Uncompressed first: no gunzip on the cold path. Both names are accepted everywhere.
    return [p for p in (directory / name, directory / f"{name}.gz") if p.is_file()]


def _sources(spec: DatasetSpec, data_dirs: list[Path] | None) -> list[tuple[str, Path | None]]:
    dirs: list[tuple[str, Path | None]] = []
    if data_dirs is None:
        env = os.environ.get("FMNIST_DATA_DIR")
        data_dirs = [Path(env).expanduser()] if env else []
    dirs += [("data-dir", d) for d in data_dirs] or [("data-dir", None)]
    dirs.append(("cache", cache_dir() / spec.name))
    dirs.append(("debian", DEBIAN_ROOT / spec.name))
    return dirs


def _fix_hint(spec: DatasetSpec) -> str:
    fixes = []
    if spec.debian_package:
        fixes.append(f"install it with `apt-get install {spec.debian_package}`")
    fixes.append(f"run `fmnist data fetch --dataset {spec.name}` with network access")
    fixes.append("or pass `--data-dir DIR` (or set FMNIST_DATA_DIR) to a folder holding the files")
    return ", ".join(fixes[:-1]) + (", " if len(fixes) > 2 else " ") + fixes[-1]


def locate(
    name: str = DEFAULT_DATASET,
    data_dir: str | Path | Sequence[str | Path] | None = None,
    *,
    download: bool = True,
    fallback: bool = True,
    keys: tuple[str, ...] | None = None,
    progress: bool = True,
) -> Location:
    """Find (and if needed download) a verified copy of each of the dataset's files.

    `data_dir` may be a list of folders, tried in order (the Dataset class passes
    `root/<Folder>/raw` and `root`). With `fallback=False` only those folders are searched.
    """
    spec = get_spec(name)
    dirs = None
    if data_dir is not None:
        dirs = [
            Path(d).expanduser()
            for d in ([data_dir] if isinstance(data_dir, (str, Path)) else data_dir)
        ]
        # A single folder the user named must exist: a typo silently falling through to
        # another copy would train on data they did not mean. (The Dataset class passes
        # candidate folders that may legitimately be missing.)
        if isinstance(data_dir, (str, Path)) and not dirs[0].is_dir():
            raise ConfigError(f"Data folder {data_dir} does not exist or is not a folder.")
    sources = _sources(spec, dirs)
    if not fallback:
        sources = sources[: max(1, len(dirs or []))]
    loc = Location(spec)
    record = _load_record()
    dirty = False
    try:
        for key in keys or tuple(k for k, _ in spec.files):
            want = dict(spec.files)[key]
            tried: list[str] = []
            for kind, directory in sources:
                if directory is None:
                    tried.append("no --data-dir/FMNIST_DATA_DIR given")
                    continue
                paths = _candidates(directory, want.name)
                if not paths:
                    tried.append(f"{kind} {directory} (not there)")
                for path in paths:
                    digest, changed = _digest(path, record)
                    dirty |= changed
                    problem, verified = _check_digest(path, want, digest)
                    if problem is None:
                        loc.files[key] = FoundFile(key, path, kind, digest.sha256 or "", verified)
                        break
                    note = f"skipped {path}: {problem}"
                    loc.notes.append(note)
                    log.warning("%s", note)
                    tried.append(f"{kind} {path} ({problem})")
                if key in loc.files:
                    break
            else:
                if fallback and download:
                    found, problem = _download(spec, key, want, record, progress)
                    if found:
                        dirty = True
                        loc.files[key] = found
                        continue
                    tried.append(
                        f"download from {', '.join(spec.mirrors) or 'no mirrors'} ({problem})"
                    )
                elif fallback:
                    tried.append("download (not allowed here)")
                raise DatasetError(
                    f"No verified copy of {spec.display} {want.name} found. "
                    f"Tried: {'; '.join(tried)}. To fix: {_fix_hint(spec)}."
                )
    finally:
        if dirty:
            _save_record(record)
    return loc


def _download(
    spec: DatasetSpec, key: str, want: DataFile, record: dict[str, Any], progress: bool
) -> tuple[FoundFile | None, str]:
    """Try each mirror; a copy lands in the cache only after it verifies."""
    import pooch  # type: ignore[import-untyped]

    dest = cache_dir() / spec.name / f"{want.name}.gz"
    problems = []
    for base in spec.mirrors:
        url = base + want.name + ".gz"
        print(f"fmnist: downloading {url}", file=sys.stderr)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmpdir:
                pooch_log = pooch.get_logger()
                level = pooch_log.level
                pooch_log.setLevel(logging.WARNING)  # we print our own one line per file
                try:
                    fetched = Path(
                        pooch.retrieve(
                            url,
                            known_hash=None,
                            fname=dest.name,
                            path=tmpdir,
                            progressbar=progress,
                        )
                    )
                finally:
                    pooch_log.setLevel(level)
                digest, _ = _digest(fetched, {})
                problem, verified = _check_digest(fetched, want, digest)
                if problem is not None:
                    problems.append(f"{url}: {problem}")
                    continue
                os.replace(fetched, dest)
        # Network libraries raise many unrelated types (requests, urllib3, OSError, ...); any
        # of them just means "try the next mirror".
        except Exception as e:  # noqa: BLE001
            if isinstance(e, OSError) and (error := as_write_error(e, "download", dest)):
                raise error from e  # the next mirror would fill the same disk
            # Keep the message short: urllib3's repeat the URL and the whole retry history.
            problems.append(f"{url}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            continue
        digest, _ = _digest(dest, record)
        return FoundFile(key, dest, "download", digest.sha256 or "", verified), ""
    return None, "; ".join(problems) or "no mirrors"


# --------------------------------------------------------------------------------------------
# Decoding with a cache


def _decoded_path(sha256: str) -> Path:
    return cache_dir() / "decoded" / f"{sha256}.npy"


def _decode(found: FoundFile, kind: str, spec: DatasetSpec) -> np.ndarray:
    cached = _decoded_path(found.sha256) if found.sha256 else None
    if cached is not None and cached.is_file():
        try:
            arr = np.load(cached, allow_pickle=False)
            return _check_array(arr, kind, spec, found.path)
        except (OSError, ValueError, DatasetError):
            # A damaged cache entry is just a miss; the source file is the truth.
            with contextlib.suppress(OSError):
                cached.unlink()
    arr = _check_array(read_idx(found.path), kind, spec, found.path)
    # np.frombuffer gives a read-only view of the file's bytes; callers (torch) want their own.
    arr = np.array(arr, order="C")
    if cached is not None:
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        try:
            write_bytes(cached, buf.getvalue(), "decoded-array cache")
        except (WriteError, OSError) as e:  # the cache only saves time: load on without it
            log.warning("%s Loading goes on without the cache.", e)
    return arr


def _arrays_from(loc: Location, split: str) -> tuple[np.ndarray, np.ndarray]:
    spec = loc.spec
    img_file, lbl_file = loc.files[f"{split}-images"], loc.files[f"{split}-labels"]
    images = _decode(img_file, "images", spec)
    labels = _decode(lbl_file, "labels", spec).astype(np.int64)
    if len(images) != len(labels):
        raise DatasetError(
            f"Dataset files {img_file.path} and {lbl_file.path} do not match: "
            f"{len(images)} images but {len(labels)} labels; replace them with a matching pair "
            "(`fmnist data fetch` gets a verified copy)."
        )
    return images, labels


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r}; valid splits are: train, test.")


def load_arrays(
    name: str = DEFAULT_DATASET,
    split: str = "train",
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] (C-contiguous) and labels int64 [N] for one split."""
    _check_split(split)
    loc = locate(name, data_dir, download=download, keys=(f"{split}-images", f"{split}-labels"))
    return _arrays_from(loc, split)


def class_names(name: str = DEFAULT_DATASET) -> list[str]:
    return list(get_spec(name).classes)


def dataset_fingerprint(name: str = DEFAULT_DATASET, data_dir: str | Path | None = None) -> str:
    """The dataset's `Location.fingerprint` (see there)."""
    return locate(name, data_dir).fingerprint


def fetch(name: str = DEFAULT_DATASET, data_dir: str | Path | None = None) -> Location:
    """Make sure all four files are present and verified, and warm the decoded-array cache."""
    loc = locate(name, data_dir)
    for split in SPLITS:
        _arrays_from(loc, split)
    return loc


def describe(name: str = DEFAULT_DATASET, data_dir: str | Path | None = None) -> dict[str, Any]:
    """What `fmnist data info` shows, as plain data."""
    loc = locate(name, data_dir, download=False)
    spec = loc.spec
    info: dict[str, Any] = {
        "dataset": spec.name,
        "title": spec.display,
        "source": loc.source,
        "classes": list(spec.classes),
        "files": {
            k: {
                "path": str(f.path),
                "source": f.source,
                "sha256": f.sha256,
                "verified": f.verified,
            }
            for k, f in loc.files.items()
        },
        "notes": loc.notes,
        "fingerprint": loc.fingerprint,
        "splits": {},
    }
    for split in SPLITS:
        images, labels = _arrays_from(loc, split)
        counts = np.bincount(labels, minlength=len(spec.classes))
        info["splits"][split] = {
            "count": int(len(labels)),
            "shape": list(images.shape),
            "class_counts": {c: int(n) for c, n in zip(spec.classes, counts, strict=True)},
            "label0": spec.classes[int(labels[0])] if len(labels) else None,
        }
    return info


# --------------------------------------------------------------------------------------------
# torchvision-compatible Dataset


class ToTensor:
    """torchvision's `ToTensor` for what these datasets yield: a PIL image (or an HxW / HxWxC
    uint8 array) becomes a float32 tensor [C, H, W] scaled to [0, 1]."""

    def __call__(self, pic: Image.Image | np.ndarray) -> torch.Tensor:
        arr = np.array(pic, dtype=np.uint8, copy=True)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous().to(torch.float32).div_(255.0)

    def __repr__(self) -> str:
        return "ToTensor()"


class _IdxDataset(torch.utils.data.Dataset):
    """Shared body of FashionMNIST, MNIST and KMNIST; subclasses only name their spec."""

    spec_name: str = DEFAULT_DATASET

    def __init__(
        self,
        root: str | Path,
        train: bool = True,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
        download: bool = False,
    ) -> None:
        self.root = str(root)
        self.train = train
        self.transform = transform
        self.target_transform = target_transform
        spec = get_spec(self.spec_name)
        split = "train" if train else "test"
        folders = [Path(root).expanduser() / spec.folder / "raw", Path(root).expanduser()]
        try:
            loc = locate(
                spec.name,
                folders,
                download=download,
                fallback=download,
                keys=(f"{split}-images", f"{split}-labels"),
            )
        except DatasetError as e:
            if download:
                raise
            raise DatasetError(
                f"{e} Or pass download=True to use the cache, Debian's copy or a download."
            ) from e
        images, labels = _arrays_from(loc, split)
        self.data = torch.from_numpy(images)  # (N, 28, 28) uint8
        self.targets = torch.from_numpy(labels)  # (N,) int64
        self.classes = list(spec.classes)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img: Any = Image.fromarray(self.data[index].numpy())
        target: Any = int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __repr__(self) -> str:
        split = "Train" if self.train else "Test"
        return (
            f"Dataset {type(self).__name__}\n    Number of datapoints: {len(self)}\n"
            f"    Root location: {self.root}\n    Split: {split}"
        )


class FashionMNIST(_IdxDataset):
    spec_name = "fashion-mnist"


class MNIST(_IdxDataset):
    spec_name = "mnist"


class KMNIST(_IdxDataset):
    spec_name = "kmnist"
