"""A folder of images per class (torchvision's `ImageFolder` layout): `--dataset folder:DIR`.

    DIR/train/<class>/*.png|jpg  +  DIR/test/<class>/...   the splits as given, or
    DIR/<class>/*.png|jpg                                  split per class with a fixed seed

Class names are the folder names, sorted (ImageFolder's order). Images of any size and colour
become 28x28 grayscale through the predictor's own `open_image` + `preprocess`, so a model sees
its training images exactly as it will later see a photo sent to `fmnist predict` or the server.

A few unreadable images (at most 1 %, or 1 in a small folder) are skipped, with a count and a
list said once per run; more than that is an error naming the first. Decoded arrays are cached
under a key made of every image's path, size and mtime: an added, removed or changed image
makes a new key, and an unchanged folder loads with one `np.load`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from fmnist.datasets.cache import decoded_path, load_decoded, save_decoded
from fmnist.datasets.idx import content_sha256, fingerprint_of
from fmnist.datasets.report import summary, warn_once
from fmnist.datasets.specs import SPLITS
from fmnist.errors import ConfigError, DatasetError, ImageError
from fmnist.images import PREPROCESS_VERSION, open_image, preprocess

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
# Without DIR/train and DIR/test, this share of each class (at least one image of a class with
# two or more) is the test split, picked by a permutation with this seed.
TEST_FRACTION = 0.2
SPLIT_SEED = 0
MAX_CLASSES = 256  # labels are stored as bytes, as in the IDX files


# ---- the layout ----------------------------------------------------------------------------


def _entries(folder: Path, dirs: bool) -> list[Path]:
    # scandir knows each entry's type from the listing (no stat per file in a big folder), and
    # sorting names is much faster than sorting Path objects
    with os.scandir(folder) as it:
        names = sorted(
            e.name for e in it
            if not e.name.startswith(".") and (e.is_dir() if dirs else e.is_file())
            and (dirs or os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
        )
    return [folder / name for name in names]


def _class_images(root: Path) -> dict[str, list[Path]]:
    """{class name: its image files} of `root`, checked: two or more classes, none empty."""
    folders = _entries(root, dirs=True)
    if len(folders) < 2:
        has = f"one class folder ({folders[0].name})" if folders else "no class folders"
        raise DatasetError(
            f"Image folder {root} has {has}: a classifier needs at least two; put each class's "
            f"images in {root}/<class name>/."
        )
    if len(folders) > MAX_CLASSES:
        raise DatasetError(f"Image folder {root} has {len(folders)} class folders; at most "
                           f"{MAX_CLASSES} are supported.")
    images = {folder.name: _entries(folder, dirs=False) for folder in folders}
    for folder in folders:
        if not images[folder.name]:
            raise DatasetError(
                f"Class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): add some "
                "or remove the folder."
            )
    return images


def _root(path: Path) -> Path:
    if not path.is_dir():
        raise ConfigError(f"Image folder {path} does not exist or is not a folder.")
    return path


def _given_splits(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "test").is_dir()


def classes(path: Path) -> tuple[str, ...]:
    root = _root(path)
    folder = root / "train" if _given_splits(root) else root
    return tuple(p.name for p in _entries(folder, dirs=True))


def layout(path: Path) -> dict[str, list[tuple[Path, int]]]:
    """{split: [(image file, label), ...]} in a fixed order."""
    root = _root(path)
    if _given_splits(root):
        train = _class_images(root / "train")
        test = _class_images(root / "test")
        if extra := sorted(set(test) - set(train)):
            raise DatasetError(
                f"Image folder {root / 'test'} has classes the training folder lacks "
                f"({', '.join(extra)}): add them to {root / 'train'} or remove them."
            )
        label_of = {c: i for i, c in enumerate(train)}
        return {
            split: [(p, label_of[c]) for c, files in images.items() for p in files]
            for split, images in (("train", train), ("test", test))
        }
    out: dict[str, list[tuple[Path, int]]] = {"train": [], "test": []}
    rng = np.random.default_rng(SPLIT_SEED)
    for label, files in enumerate(_class_images(root).values()):
        n_test = max(1, round(len(files) * TEST_FRACTION)) if len(files) > 1 else 0
        is_test = np.zeros(len(files), dtype=bool)
        is_test[rng.permutation(len(files))[:n_test]] = True
        for p, test in zip(files, is_test, strict=True):
            out["test" if test else "train"].append((p, label))
    return out


# ---- decoding ------------------------------------------------------------------------------


def _listing_key(root: Path, files: dict[str, list[tuple[Path, int]]]) -> str:
    """sha256 over every image's split, label, path, size and mtime, and the preprocessing's
    version: decoded images made by an older preprocessing are not reused."""
    h = hashlib.sha256(f"preprocess {PREPROCESS_VERSION}\n".encode())
    for split, items in files.items():
        for p, label in items:
            st = p.stat()
            h.update(f"{split} {label} {p.relative_to(root)} {st.st_size} {st.st_mtime_ns}\n"
                     .encode())
    return h.hexdigest()


def _decode_all(root: Path, files: dict[str, list[tuple[Path, int]]]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    total = sum(len(items) for items in files.values())
    allowed = max(1, total // 100)
    for split, items in files.items():
        images, labels = [], []
        for p, label in items:
            try:
                images.append(preprocess(open_image(p)))
            except ImageError as e:
                # the error names the file; relative to the folder, a list of them stays short
                skipped.append(str(e).replace(f"{root}{os.sep}", "").rstrip("."))
                if len(skipped) > allowed:
                    raise DatasetError(
                        f"More than {allowed} of the {total:,} images in {root} cannot be read "
                        f"(the first: {skipped[0]}); fix or remove them (up to {allowed} would "
                        "be skipped)."
                    ) from e
                continue
            labels.append(label)
        out[f"{split}-images"] = np.stack(images) if images else np.zeros((0, 28, 28), np.uint8)
        out[f"{split}-labels"] = np.array(labels, dtype=np.int64)
    out["skipped"] = np.array(skipped, dtype=str)
    for key in [k for k in out if k.endswith(("-images", "-labels"))]:
        out[f"{key}-sha256"] = np.array(content_sha256(out[key].astype(np.uint8)))
    return out


def _decoded(path: Path) -> dict[str, Any]:
    root = _root(path).resolve()
    files = layout(root)
    cached = decoded_path(f"folder-{_listing_key(root, files)}", ".npz")
    entry = load_decoded(cached)
    if entry is None:
        entry = _decode_all(root, files)
        save_decoded(cached, entry)
    skipped = [str(s) for s in entry["skipped"]]
    if skipped:
        shown = ", ".join(skipped[:10]) + (f", and {len(skipped) - 10} more" if len(skipped) > 10
                                           else "")
        total = sum(len(items) for items in files.values())
        warn_once(f"Skipped {len(skipped)} unreadable image(s) of {total:,} in {root}: {shown}.")
    return {**entry, "skipped": skipped}


def load(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    entry = _decoded(path)
    return entry[f"{split}-images"], entry[f"{split}-labels"]


def _fingerprint(entry: dict[str, Any], names: tuple[str, ...]) -> str:
    """The content's fingerprint (as for IDX files), with the class names: renaming a class
    folder changes what the labels mean."""
    content = fingerprint_of({k[: -len("-sha256")]: str(v) for k, v in entry.items()
                              if k.endswith("-sha256")})
    return hashlib.sha256("\n".join([content, *names]).encode()).hexdigest()


def fingerprint(path: Path) -> str:
    return _fingerprint(_decoded(path), classes(path))


def describe(path: Path) -> dict[str, Any]:
    root = _root(path).resolve()
    entry, names = _decoded(root), classes(root)
    given = _given_splits(root)
    files = {
        f"{split}-{kind}": {"path": str(root / split if given else root), "source": "folder",
                            "sha256": str(entry[f"{split}-{kind}-sha256"]), "verified": False}
        for split in SPLITS for kind in ("images", "labels")
    }
    notes = [f"skipped, unreadable: {s}" for s in entry["skipped"]]
    if not given:
        notes.append(f"no train/ and test/ folders: {TEST_FRACTION:.0%} of each class is the "
                     f"test split (seed {SPLIT_SEED})")
    splits = {split: (entry[f"{split}-images"], entry[f"{split}-labels"]) for split in SPLITS}
    return summary(f"folder:{root}", f"{root.name} (image folder)", "folder", names, splits,
                   files, notes, _fingerprint(entry, names))
