"""Finding, fetching and verifying a dataset's IDX files, and decoding them through the cache.

Files are looked for in this order, stopping at the first copy that verifies:

1. `data_dir` (the CLI's `--data-dir`) or `$FMNIST_DATA_DIR`;
2. the user cache (`$FMNIST_CACHE_DIR`, else platformdirs' user cache dir for "fmnist");
3. Debian's `/usr/share/datasets/<name>/` (package `dataset-fashion-mnist`);
4. copies other tools downloaded: torchvision's default root (`./data/<Folder>/raw/`, where the
   PyTorch Quickstart puts them) and Keras's `~/.keras/datasets/<name>/`;
5. a download from the spec's mirrors into the cache.

Verification hashes the *decompressed* bytes: Debian re-compresses the upstream `.gz` files, so a
hash of the `.gz` bytes would reject a perfectly good copy. Every source passes the same check.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmnist.atomic import as_write_error
from fmnist.datasets.cache import (
    Digest,
    decoded_path,
    file_digest,
    load_decoded,
    load_record,
    save_decoded,
    save_record,
)
from fmnist.datasets.idx import check_array, fingerprint_of, read_idx
from fmnist.datasets.report import warn_once
from fmnist.datasets.specs import DEFAULT_DATASET, DataFile, DatasetSpec, cache_dir, get_spec
from fmnist.errors import ConfigError, DatasetError

# Patchable so tests can point the Debian source at a temp dir.
DEBIAN_ROOT = Path("/usr/share/datasets")


def _check_digest(path: Path, want: DataFile, digest: Digest) -> tuple[str | None, bool]:
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



@dataclass(frozen=True)
class FoundFile:
    key: str  # "train-images", ...
    path: Path
    source: str  # "data-dir", "cache", "debian", "torchvision", "keras", "download"
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
        return fingerprint_of({k: f.sha256 for k, f in self.files.items()})


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
    # Copies other tools downloaded, before a download of our own.
    dirs.append(("torchvision", Path.cwd() / "data" / spec.folder / "raw"))
    if spec.keras_folder:
        dirs.append(("keras", Path.home() / ".keras" / "datasets" / spec.keras_folder))
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
    record = load_record()
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
                    digest, changed = file_digest(path, record)
                    dirty |= changed
                    problem, verified = _check_digest(path, want, digest)
                    if problem is None:
                        loc.files[key] = FoundFile(key, path, kind, digest.sha256 or "", verified)
                        break
                    note = f"skipped {path}: {problem}"
                    loc.notes.append(note)
                    warn_once(note)
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
            save_record(record)
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
                digest, _ = file_digest(fetched, {})
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
        digest, _ = file_digest(dest, record)
        return FoundFile(key, dest, "download", digest.sha256 or "", verified), ""
    return None, "; ".join(problems) or "no mirrors"


def _decode(found: FoundFile, kind: str, spec: DatasetSpec) -> np.ndarray:
    cached = decoded_path(found.sha256) if found.sha256 else None
    if cached is not None:
        arr = load_decoded(cached)
        if arr is not None:
            try:
                return check_array(arr, kind, spec, found.path)
            except DatasetError:
                pass  # an entry that fails the checks is a miss too: decode the source again
    arr = check_array(read_idx(found.path), kind, spec, found.path)
    # np.frombuffer gives a read-only view of the file's bytes; callers (torch) want their own.
    arr = np.array(arr, order="C")
    if cached is not None:
        save_decoded(cached, arr)
    return arr


def idx_arrays(loc: Location, split: str) -> tuple[np.ndarray, np.ndarray]:
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

