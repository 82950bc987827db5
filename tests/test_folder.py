"""`--dataset folder:DIR`: a folder of images per class, small PNG/JPEG files made here."""

from __future__ import annotations

import json
import logging
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmnist import datasets
from fmnist.cli import main
from fmnist.datasets import folder
from fmnist.errors import ConfigError, DatasetError
from fmnist.images import open_image, preprocess


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMNIST_CACHE_DIR", str(tmp_path / "cache"))


def draw(path: Path, seed: int, size: tuple[int, int] = (40, 30), fmt: str = "PNG",
         shade: int | None = None) -> Path:
    """A colour image: a bright rectangle, placed by `seed`, on a dark background; its colour
    drawn by `seed` too, or a grey `shade`."""
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = np.full((h, w, 3), 20, dtype=np.uint8)
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    colour = rng.integers(100, 256, 3, dtype=np.uint8) if shade is None else shade
    pixels[y0 : y0 + h // 2, x0 : x0 + w // 2] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def make_folder(root: Path, counts: dict[str, int], suffix: str = ".png") -> Path:
    """`counts[c]` images in `root/c` for each class c. Each class has a shade of its own, so a
    model can tell them apart; placements are seeded by file name, the same in every run
    (seeding with hash() changed the images with each process's hash seed, and a model
    trained on them could fail to learn in one run of ten)."""
    for k, (c, n) in enumerate(counts.items()):
        for i in range(n):
            draw(root / c / f"{i:03d}{suffix}", seed=zlib.crc32(f"{c}/{i}".encode()),
                 fmt="JPEG" if suffix == ".jpg" else "PNG", shade=100 + 150 * k // max(1, len(counts) - 1))
    return root


def test_a_folder_is_split_per_class_and_preprocessed_like_a_photo(tmp_path):
    root = make_folder(tmp_path / "shoes", {"sneaker": 10, "boot": 5})
    draw(root / "boot" / "tall.jpg", 99, size=(300, 500), fmt="JPEG")  # any size and format
    (root / "boot" / "notes.txt").write_text("not an image: ignored")
    name = f"folder:{root}"
    assert datasets.class_names(name) == ["boot", "sneaker"]  # sorted, as ImageFolder
    (xs, ys), (xt, yt) = (datasets.load_arrays(name, split) for split in ("train", "test"))
    assert xs.shape[1:] == (28, 28) and xs.dtype == np.uint8 and ys.dtype == np.int64
    assert len(ys) + len(yt) == 16
    assert np.bincount(yt).tolist() == [1, 2]  # 20 % of each class, seeded
    files = folder.layout(root)
    assert [label for _, label in files["test"]] == yt.tolist()
    for (path, _), image in zip(files["test"], xt, strict=True):
        np.testing.assert_array_equal(image, preprocess(open_image(path)))
    # the seed makes the split the same every time
    assert folder.layout(root) == files


def test_train_and_test_folders_are_used_as_given(tmp_path):
    root = tmp_path / "data"
    make_folder(root / "train", {"a": 3, "b": 2})
    make_folder(root / "test", {"a": 1, "b": 1})
    assert datasets.load_arrays(f"folder:{root}", "train")[1].tolist() == [0, 0, 0, 1, 1]
    assert datasets.load_arrays(f"folder:{root}", "test")[1].tolist() == [0, 1]
    make_folder(root / "test", {"c": 1})
    with pytest.raises(DatasetError, match=r"has classes the training folder lacks \(c\)"):
        datasets.load_arrays(f"folder:{root}", "test")


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({"only": 3}, r"has one class folder \(only\): a classifier needs at least two"),
        ({}, r"has no class folders"),
        ({"a": 2, "b": 0}, r"^Class folder .*/b holds no images \(\.png, .*\): add some or remove"),
    ],
    ids=["one-class", "no-class", "empty-class"],
)
def test_bad_layouts_are_one_sentence(tmp_path, counts, message):
    root = make_folder(tmp_path / "imgs", counts)
    root.mkdir(exist_ok=True)
    for c in counts:
        (root / c).mkdir(exist_ok=True)
    with pytest.raises(DatasetError, match=message):
        datasets.load_arrays(f"folder:{root}", "train")
    with pytest.raises(ConfigError, match="does not exist"):
        datasets.load_arrays(f"folder:{tmp_path / 'nope'}", "train")


def test_a_few_unreadable_images_are_skipped_and_said_once(tmp_path, caplog):
    root = make_folder(tmp_path / "imgs", {"a": 60, "b": 60})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    name = f"folder:{root}"
    with caplog.at_level(logging.WARNING):
        n = sum(len(datasets.load_arrays(name, s)[1]) for s in ("train", "test"))
        datasets.dataset_fingerprint(name)
    assert n == 120
    said = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0].startswith("Skipped 1 unreadable image(s) of 121 in ") and "broken.png" in said[0]
    info = datasets.describe(name)
    assert any("broken.png" in note for note in info["notes"])


def test_many_unreadable_images_are_an_error_and_nothing_is_cached(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 5, "b": 5})
    for i in range(2):
        (root / "b" / f"zz{i}.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"^More than 1 of the 12 images in .* cannot be read "
                                           r"\(the first: b/zz0.png is empty, not an image\); fix or remove them"):
        datasets.load_arrays(f"folder:{root}", "train")
    assert not list((datasets.cache_dir() / "decoded").glob("folder-*"))


def _corrupt_keeping_size_and_mtime(path: Path) -> None:
    """Garbage of the same length and mtime: only a load that decodes the file again sees it."""
    st = path.stat()
    path.write_bytes(b"\0" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_the_second_load_is_cached_and_a_changed_folder_is_seen(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 4, "b": 4})
    first = datasets.load_arrays(f"folder:{root}", "train")
    path, _ = folder.layout(root)["train"][0]
    _corrupt_keeping_size_and_mtime(path)
    # a warm load does not decode: the corrupt file goes unnoticed, the pixels are the cached ones
    np.testing.assert_array_equal(datasets.load_arrays(f"folder:{root}", "train")[0], first[0])
    draw(path, 11)
    draw(root / "b" / "new.png", 7)
    assert len(datasets.load_arrays(f"folder:{root}", "train")[1]) == len(first[1]) + 1
    # an image replaced in place (same name) is seen too
    before = datasets.load_arrays(f"folder:{root}", "train")[0][0]
    draw(path, 12345, size=(64, 20))
    os.utime(path, ns=(1, 1))  # even with an old mtime: the size changed
    assert not np.array_equal(datasets.load_arrays(f"folder:{root}", "train")[0][0], before)


def test_a_changed_preprocessing_decodes_the_folder_again(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs", {"a": 2, "b": 2})
    datasets.load_arrays(f"folder:{root}", "train")
    for path, _ in folder.layout(root)["train"][:2]:  # more than the 1 in 100 skipped quietly
        _corrupt_keeping_size_and_mtime(path)
    datasets.load_arrays(f"folder:{root}", "train")  # cached: not decoded, so no error
    monkeypatch.setattr(folder, "PREPROCESS_VERSION", folder.PREPROCESS_VERSION + 1)
    with pytest.raises(DatasetError, match="is empty|corrupt|not an image"):
        datasets.load_arrays(f"folder:{root}", "train")


def test_the_fingerprint_covers_pixels_and_class_names(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 3, "b": 3})
    before = datasets.dataset_fingerprint(f"folder:{root}")
    (root / "b").rename(root / "c")
    assert datasets.dataset_fingerprint(f"folder:{root}") != before
    (root / "c").rename(root / "b")
    assert datasets.dataset_fingerprint(f"folder:{root}") == before


def test_train_predict_evaluate_info_on_a_folder(tmp_path, monkeypatch, capsys):
    """A model trained on a folder predicts that folder's classes, from another directory too."""
    root = make_folder(tmp_path / "imgs", {"left": 8, "right": 8})
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", "folder:imgs", "--model", "mlp", "--epochs", "1",
                 "--batch-size", "4", "--out", str(tmp_path / "run")]) == 0
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["classes"] == ["left", "right"] and meta["dataset"] == f"folder:{root}"
    assert meta["dataset_sha256"] == datasets.dataset_fingerprint(f"folder:{root}")
    monkeypatch.chdir(tmp_path / "run")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), "--index", "0"]) == 0
    assert 'Actual: "left"' in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == f"folder:{root}"
    assert main(["data", "info", "--dataset", f"folder:{root}"]) == 0
    out = capsys.readouterr().out
    assert "imgs (image folder)" in out and "left" in out and "test split (seed 0)" in out
    # as many classes, other names: evaluating there would score the model on the wrong labels
    other = make_folder(tmp_path / "other", {"left": 2, "up": 2})
    assert main(["evaluate", str(tmp_path / "run"), "--dataset", f"folder:{other}"]) == 2
    assert "has other classes than the model (label 1 is 'up' there, 'right' for the model)" in (
        capsys.readouterr().err)
