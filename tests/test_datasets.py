"""The data layer on small synthetic IDX files (plus a few `realdata` tests on Fashion-MNIST)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from idx_helpers import CLASSES, NAMES, idx_bytes, make_payloads, make_spec, write_files
from PIL import Image

from fmnist import datasets
from fmnist.datasets import (
    KMNIST,
    MNIST,
    SPECS,
    FashionMNIST,
    ToTensor,
    dataset_fingerprint,
    get_spec,
    load_arrays,
    locate,
)
from fmnist.errors import ConfigError, DatasetError

NAME = "synth"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Isolated cache, Debian root, home and working folder (where torchvision's and Keras's
    copies are looked for), and no FMNIST_DATA_DIR; returns the folders."""
    dirs = {k: tmp_path / k for k in ("cache", "debian_root", "data", "home", "cwd")}
    for k in ("data", "home", "cwd"):
        dirs[k].mkdir()
    monkeypatch.setenv("HOME", str(dirs["home"]))
    monkeypatch.chdir(dirs["cwd"])
    monkeypatch.setenv("FMNIST_CACHE_DIR", str(dirs["cache"]))
    monkeypatch.delenv("FMNIST_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets.finding, "DEBIAN_ROOT", dirs["debian_root"])
    return dirs


@pytest.fixture
def payloads() -> dict[str, bytes]:
    return make_payloads()


@pytest.fixture
def register(monkeypatch: pytest.MonkeyPatch) -> Callable[..., datasets.DatasetSpec]:
    """Register a spec matching some payloads under NAME (undone after the test)."""

    def reg(payloads: dict[str, bytes], **kw) -> datasets.DatasetSpec:
        spec = make_spec(NAME, payloads, **kw)
        monkeypatch.setitem(SPECS, NAME, spec)
        return spec

    return reg


# ------------------------------------------------------------------------------------------
# The IDX reader: every corruption is one DatasetError naming the file and the problem


def _images(n: int = 20) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def _labels(n: int = 20, top: int = 9) -> np.ndarray:
    return (np.arange(n) % (top + 1)).astype(np.uint8)


GOOD_IMAGES = idx_bytes(_images())
CORRUPT_IMAGES = {
    "bad magic": (b"\x12\x34" + GOOD_IMAGES[2:], "bad magic number 0x12340803"),
    "unknown type code": (GOOD_IMAGES[:2] + b"\x07" + GOOD_IMAGES[3:], "unknown IDX element type code 0x07"),
    "wrong element type": (idx_bytes(_images().astype(np.float32), code=0x0D), "element type float32"),
    "wrong ndim": (idx_bytes(_images().reshape(20, 784)), "has 2 dimensions, expected 3"),
    "wrong image size": (idx_bytes(_images()[:, :27, :]), "holds 27x28 images, expected 28x28"),
    "truncated data": (GOOD_IMAGES[:-100], "is truncated"),
    "truncated header": (GOOD_IMAGES[:10], "truncated IDX header"),
    "empty file": (b"", "too short for an IDX header"),
    "extra bytes": (GOOD_IMAGES + b"\0" * 7, "has 7 unexpected bytes"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CORRUPT_IMAGES))
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_corrupt_images_raise_dataset_error_naming_file_and_problem(
    case, gz, env, payloads, register
):
    bad, problem = CORRUPT_IMAGES[case]
    payloads = dict(payloads, **{"train-images": bad})
    # The spec's hash matches the corrupt file, so it passes verification and the IDX checks
    # are what must catch it.
    register(payloads)
    paths = write_files(env["data"], payloads, gz=gz)
    with pytest.raises(DatasetError) as err:
        load_arrays(NAME, "train", env["data"])
    msg = str(err.value)
    assert str(paths["train-images"]) in msg
    assert problem in msg


@pytest.mark.parametrize("bad", [12, 10])  # far out, and the edge: label 10 of 10 classes
def test_label_out_of_range(env, payloads, register, bad):
    labels = np.array(list(range(10)) * 2, np.uint8)
    labels[7] = bad
    payloads = dict(payloads, **{"train-labels": idx_bytes(labels)})
    register(payloads)
    paths = write_files(env["data"], payloads)
    with pytest.raises(DatasetError, match=f"label {bad}, out of range for 10 classes") as err:
        load_arrays(NAME, "train", env["data"])
    assert str(paths["train-labels"]) in str(err.value)


def test_largest_label_one_below_the_class_count_loads(env, payloads, register):
    labels = np.array([9] * 20, np.uint8)
    payloads = dict(payloads, **{"train-labels": idx_bytes(labels)})
    register(payloads)
    write_files(env["data"], payloads)
    _, y = load_arrays(NAME, "train", env["data"])
    assert y.tolist() == [9] * 20


def test_labels_with_wrong_ndim(env, payloads, register):
    payloads = dict(payloads, **{"train-labels": idx_bytes(_labels().reshape(20, 1))})
    register(payloads)
    write_files(env["data"], payloads)
    with pytest.raises(DatasetError, match="has 2 dimensions, expected 1 for labels"):
        load_arrays(NAME, "train", env["data"])


def test_image_label_count_mismatch(env, payloads, register):
    payloads = dict(payloads, **{"train-labels": idx_bytes(_labels(19))})
    register(payloads)
    paths = write_files(env["data"], payloads)
    with pytest.raises(DatasetError, match="20 images but 19 labels") as err:
        load_arrays(NAME, "train", env["data"])
    assert str(paths["train-images"]) in str(err.value)
    assert str(paths["train-labels"]) in str(err.value)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (gzip.compress(GOOD_IMAGES)[:-20], "is a corrupt gzip file"),  # cut short
        (gzip.compress(GOOD_IMAGES)[:30] + b"\xff" * 200, "is a corrupt gzip file"),  # garbage
        (GOOD_IMAGES, "is named .gz but is not gzip data"),
    ],
    ids=["truncated-gzip", "garbage-gzip", "not-gzip"],
)
def test_read_idx_bad_gzip(tmp_path, content, problem):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(DatasetError) as err:
        datasets.read_idx(path)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_bad_gzip_in_data_dir_is_named_in_the_final_error(env, payloads, register):
    register(payloads)
    paths = write_files(env["data"], payloads)
    paths["train-images"].write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError) as err:
        load_arrays(NAME, "train", env["data"], download=False)
    msg = str(err.value)
    assert f"{paths['train-images']} (Dataset file {paths['train-images']} is named .gz" in msg
    assert "--data-dir" in msg and "\n" not in msg


def test_read_idx_roundtrip_other_dtypes(tmp_path):
    arr = np.arange(12, dtype=np.int32).reshape(3, 4) - 5
    path = tmp_path / "x.idx"
    path.write_bytes(idx_bytes(arr, code=0x0C))
    out = datasets.read_idx(path)
    assert out.dtype == np.int32 and np.array_equal(out, arr)


# ------------------------------------------------------------------------------------------
# Specs and the contract other modules rely on


def test_specs_and_get_spec():
    assert datasets.DEFAULT_DATASET == "fashion-mnist"
    assert set(SPECS) >= {"fashion-mnist", "mnist", "kmnist"}
    fm = get_spec("fashion-mnist")
    assert fm.classes[9] == "Ankle boot" and len(fm.classes) == 10
    for spec in SPECS.values():
        assert len(spec.files) == 4 and spec.mirrors
        # Every file has a hash to verify downloads with.
        assert all(f.sha256 or f.gz_md5 for _, f in spec.files)
    with pytest.raises(ConfigError, match="fashion-mnist, kmnist, mnist"):
        get_spec("cifar")


def test_load_arrays_contract(env, payloads, register):
    register(payloads)
    write_files(env["data"], payloads)
    x, y = load_arrays(NAME, "train", env["data"])
    assert x.dtype == np.uint8 and x.shape == (20, 28, 28) and x.flags.c_contiguous
    assert x.flags.writeable  # torch.from_numpy warns on read-only arrays
    assert y.dtype == np.int64 and y.shape == (20,)
    expected = np.frombuffer(payloads["train-images"], np.uint8, offset=16).reshape(20, 28, 28)
    assert np.array_equal(x, expected)
    xt, yt = load_arrays(NAME, "test", env["data"])
    assert xt.shape == (10, 28, 28) and yt[0] == 9
    with pytest.raises(ConfigError, match="train, test"):
        load_arrays(NAME, "valid", env["data"])


# ------------------------------------------------------------------------------------------
# Source order and verification


def test_source_order_data_dir_then_cache_then_debian(env, payloads, register):
    register(payloads)
    for folder in (env["data"], env["cache"] / NAME, env["debian_root"] / NAME):
        write_files(folder, payloads)
    assert locate(NAME, env["data"], download=False).source == "data-dir"
    assert locate(NAME, download=False).source == "cache"
    for p in (env["cache"] / NAME).iterdir():
        p.unlink()
    loc = locate(NAME, download=False)
    assert loc.source == "debian"
    assert loc.files["train-images"].path.parent == env["debian_root"] / NAME


def test_copies_other_tools_downloaded_come_after_debian_and_before_a_download(
    env, payloads, register, caplog
):
    import dataclasses
    import logging

    spec = register(payloads)
    SPECS[NAME] = dataclasses.replace(spec, keras_folder="synth-keras")
    torchvision_raw = env["cwd"] / "data" / "Synth" / "raw"  # the Quickstart's root="data"
    keras = env["home"] / ".keras" / "datasets" / "synth-keras"
    write_files(keras, payloads)
    assert locate(NAME, download=False).source == "keras"
    write_files(torchvision_raw, payloads, gz=False)
    assert locate(NAME, download=False).source == "torchvision"
    write_files(env["debian_root"] / NAME, payloads)
    assert locate(NAME, download=False).source == "debian"
    # a found copy passes the same hashes: a wrong one is skipped, said once per run
    for p in (env["debian_root"] / NAME).iterdir():
        p.unlink()
    write_files(torchvision_raw, make_payloads(seed=1), gz=False, keys=("test-images",))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            x, _ = load_arrays(NAME, "test")
    assert locate(NAME, download=False).files["test-images"].source == "keras"
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and str(torchvision_raw) in skipped[0].getMessage()
    assert datasets.describe(NAME)["source"] == "mixed (keras, torchvision)"


def test_env_var_data_dir(env, payloads, register, monkeypatch):
    register(payloads)
    write_files(env["data"], payloads)
    write_files(env["debian_root"] / NAME, payloads)
    monkeypatch.setenv("FMNIST_DATA_DIR", str(env["data"]))
    assert locate(NAME, download=False).source == "data-dir"


def test_wrong_hash_in_earlier_source_is_skipped_with_a_note(env, payloads, register):
    register(payloads)
    write_files(env["debian_root"] / NAME, payloads)
    wrong = write_files(env["data"], make_payloads(seed=1))
    loc = locate(NAME, env["data"], download=False)
    # Each file is resolved on its own: the labels (identical in both) still come from data-dir.
    assert loc.files["train-images"].source == "debian"
    assert loc.files["train-labels"].source == "data-dir"
    assert any(str(wrong["train-images"]) in n and "sha256" in n for n in loc.notes)
    x, _ = load_arrays(NAME, "train", env["data"])
    assert np.array_equal(
        x.reshape(-1), np.frombuffer(payloads["train-images"], np.uint8, offset=16)
    )


def test_gz_and_plain_names_give_the_same_arrays_and_fingerprint(env, payloads, register):
    register(payloads)
    write_files(env["data"] / "gz", payloads, gz=True)
    write_files(env["data"] / "plain", payloads, gz=False)
    a = load_arrays(NAME, "train", env["data"] / "gz")
    b = load_arrays(NAME, "train", env["data"] / "plain")
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert dataset_fingerprint(NAME, env["data"] / "gz") == dataset_fingerprint(
        NAME, env["data"] / "plain"
    )


def test_fingerprint_depends_on_content(env, payloads, register, monkeypatch):
    register(payloads)
    write_files(env["data"], payloads)
    fp = dataset_fingerprint(NAME, env["data"])
    assert len(fp) == 64
    other = make_payloads(seed=2)
    monkeypatch.setitem(SPECS, NAME, make_spec(NAME, other))
    write_files(env["data"] / "other", other)
    assert dataset_fingerprint(NAME, env["data"] / "other") != fp


def _sha256_lines(loc: datasets.Location, keys: tuple[str, ...]) -> str:
    lines = "".join(f"{k} {loc.files[k].sha256}\n" for k in keys)
    return hashlib.sha256(lines.encode()).hexdigest()


def test_fingerprint_of_a_partial_location(env, payloads, register):
    """`load_arrays` locates only one split's two files: their Location has a fingerprint too,
    over just those files, while the whole dataset's is what it always was."""
    register(payloads)
    write_files(env["data"], payloads)
    whole = locate(NAME, env["data"], download=False)
    part = locate(NAME, env["data"], download=False, keys=("test-images", "test-labels"))
    assert set(part.files) == {"test-images", "test-labels"}
    for key, found in whole.files.items():
        assert found.sha256 == hashlib.sha256(payloads[key]).hexdigest()

    fp = part.fingerprint
    assert re.fullmatch("[0-9a-f]{64}", fp)
    assert fp == _sha256_lines(part, ("test-images", "test-labels"))
    # The spec's order, whatever order the keys were asked in.
    reordered = locate(NAME, env["data"], download=False, keys=("test-labels", "test-images"))
    assert reordered.fingerprint == fp

    all_four = ("train-images", "train-labels", "test-images", "test-labels")
    assert whole.fingerprint == _sha256_lines(whole, all_four)
    assert dataset_fingerprint(NAME, env["data"]) == whole.fingerprint
    assert fp != whole.fingerprint


def test_all_sources_fail_lists_what_was_tried_and_the_fix(env, payloads, register):
    register(payloads, debian_package="dataset-synth")
    with pytest.raises(DatasetError) as err:
        load_arrays(NAME, "train", env["data"], download=False)
    msg = str(err.value)
    for tried in (str(env["data"]), str(env["cache"] / NAME), str(env["debian_root"] / NAME)):
        assert tried in msg
    assert "apt-get install dataset-synth" in msg
    assert f"fmnist data fetch --dataset {NAME}" in msg and "--data-dir" in msg


def test_changed_file_is_noticed_on_the_warm_path(env, payloads, register):
    register(payloads)
    paths = write_files(env["data"], payloads)
    load_arrays(NAME, "train", env["data"])  # warm: digest recorded, arrays cached
    paths["train-images"].write_bytes(gzip.compress(make_payloads(seed=3)["train-images"]))
    with pytest.raises(DatasetError, match="sha256 of its decompressed bytes"):
        load_arrays(NAME, "train", env["data"], download=False)


def test_md5_only_spec(env, payloads, register):
    """MNIST/KMNIST-style specs: a .gz copy verifies by md5; a plain copy loads unverified."""
    register(payloads, md5_only=True)
    write_files(env["data"] / "gz", payloads, gz=True)
    loc = locate(NAME, env["data"] / "gz", download=False)
    assert all(f.verified for f in loc.files.values())
    write_files(env["data"] / "plain", payloads, gz=False)
    loc = locate(NAME, env["data"] / "plain", download=False)
    assert not any(f.verified for f in loc.files.values())
    x, _ = load_arrays(NAME, "train", env["data"] / "plain")
    assert x.shape == (20, 28, 28)
    write_files(env["data"] / "bad", make_payloads(seed=4), gz=True)
    with pytest.raises(DatasetError, match="md5 is"):
        locate(NAME, env["data"] / "bad", download=False)


# ------------------------------------------------------------------------------------------
# Download from mirrors (a local HTTP server on 127.0.0.1)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def http_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_download_into_cache_then_reuse(env, payloads, register, http_dir):
    root, url = http_dir
    write_files(root / "good", payloads)
    # The first mirror lacks the files (404): the second one must be used.
    register(payloads, mirrors=(url + "missing/", url + "good/"))
    x, y = load_arrays(NAME, "train", env["data"])
    assert x.shape == (20, 28, 28)
    cached = sorted(p.name for p in (env["cache"] / NAME).iterdir())
    assert cached == sorted(NAMES[k] + ".gz" for k in ("train-images", "train-labels"))
    loc = locate(NAME, keys=("train-images",))
    assert loc.source == "cache"


def test_corrupt_download_is_rejected_and_leaves_nothing(env, payloads, register, http_dir):
    root, url = http_dir
    served = dict(payloads)
    served["train-images"] = payloads["train-images"][:-1] + b"\x01"  # one byte differs
    write_files(root, served)
    register(payloads, mirrors=(url,))
    with pytest.raises(DatasetError) as err:
        load_arrays(NAME, "train")
    msg = str(err.value)
    assert url + "train-images-idx3-ubyte.gz" in msg and "sha256" in msg
    # Images are fetched first and fail, so nothing at all (no file, no temp dir) may remain.
    assert list((env["cache"] / NAME).rglob("*")) == []


def test_download_md5_only_spec(env, payloads, register, http_dir):
    root, url = http_dir
    write_files(root, payloads)
    register(payloads, mirrors=(url,), md5_only=True)
    loc = datasets.fetch(NAME)
    assert {f.source for f in loc.files.values()} == {"download"}
    assert all(f.verified for f in loc.files.values())


# ------------------------------------------------------------------------------------------
# Decoded-array cache


def test_decoded_cache_second_load_does_not_reparse(env, payloads, register, monkeypatch):
    register(payloads)
    write_files(env["data"], payloads)
    first = load_arrays(NAME, "train", env["data"])

    def boom(*a, **k):
        raise AssertionError("the warm path must not read or parse the IDX file")

    monkeypatch.setattr(datasets.finding, "read_idx", boom)
    second = load_arrays(NAME, "train", env["data"])
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert second[0].flags.c_contiguous and second[1].dtype == np.int64


def test_damaged_decoded_cache_entry_is_rebuilt(env, payloads, register):
    register(payloads)
    write_files(env["data"], payloads)
    first, _ = load_arrays(NAME, "train", env["data"])
    for npy in (env["cache"] / "decoded").glob("*.npy"):
        npy.write_bytes(b"garbage")
    again, _ = load_arrays(NAME, "train", env["data"])
    assert np.array_equal(first, again)


# ------------------------------------------------------------------------------------------
# The torchvision-compatible Dataset


class Synth(datasets._IdxDataset):
    spec_name = NAME


def test_dataset_finds_root_raw_folder_and_root(env, payloads, register, tmp_path):
    register(payloads)
    write_files(tmp_path / "root1" / "Synth" / "raw", payloads)
    write_files(tmp_path / "root2", payloads, gz=False)
    for root in (tmp_path / "root1", tmp_path / "root2"):
        ds = Synth(root=str(root), train=True)
        assert len(ds) == 20
        img, target = ds[0]
        assert isinstance(img, Image.Image) and img.mode == "L" and img.size == (28, 28)
        assert isinstance(target, int) and target == 9
        assert ds.data.dtype == torch.uint8 and ds.data.shape == (20, 28, 28)
        assert ds.targets.dtype == torch.int64 and ds.classes == list(CLASSES)
        assert ds.class_to_idx["class3"] == 3
    assert len(Synth(root=tmp_path / "root1", train=False)) == 10


def test_dataset_download_false_only_looks_in_root(env, payloads, register, tmp_path):
    register(payloads)
    write_files(env["debian_root"] / NAME, payloads)
    with pytest.raises(DatasetError, match="download=True"):
        Synth(root=tmp_path / "nothing", train=True, download=False)
    # download=True falls back to the same source order: Debian's copy counts.
    ds = Synth(root=tmp_path / "nothing", train=True, download=True)
    assert len(ds) == 20
    assert not (tmp_path / "nothing").exists()  # nothing written into root


def test_dataset_transforms_and_dataloader(env, payloads, register, tmp_path):
    register(payloads)
    write_files(tmp_path, payloads)
    ds = Synth(root=tmp_path, transform=ToTensor(), target_transform=lambda t: t * 10)
    x, y = ds[1]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28) and y == 80
    assert torch.equal(x[0], ds.data[1].float() / 255)
    X, Y = next(
        iter(torch.utils.data.DataLoader(Synth(root=tmp_path, transform=ToTensor()), batch_size=8))
    )
    assert X.shape == (8, 1, 28, 28) and X.dtype == torch.float32 and Y.dtype == torch.int64


def test_variants_share_one_implementation():
    assert (FashionMNIST.spec_name, MNIST.spec_name, KMNIST.spec_name) == (
        "fashion-mnist",
        "mnist",
        "kmnist",
    )
    assert all(issubclass(c, datasets._IdxDataset) for c in (FashionMNIST, MNIST, KMNIST))


def test_to_tensor_matches_torchvision_semantics():
    arr = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    t = ToTensor()(Image.fromarray(arr))
    assert t.dtype == torch.float32 and t.shape == (1, 2, 2)
    assert torch.allclose(t[0], torch.tensor([[0.0, 1.0], [0.2, 0.4]]))
    rgb = np.zeros((3, 4, 3), np.uint8)
    assert ToTensor()(rgb).shape == (3, 3, 4)


# ------------------------------------------------------------------------------------------
# The real Fashion-MNIST (Debian's copy, or FMNIST_DATA_DIR)

realdata = pytest.mark.realdata


def _need_real() -> None:
    try:
        locate("fashion-mnist", download=False)
    except DatasetError as e:
        pytest.skip(f"real Fashion-MNIST not available: {e}")


@realdata
def test_quickstart_data_code_on_real_data(tmp_path):
    _need_real()
    training_data = FashionMNIST(
        root=tmp_path / "data", train=True, download=True, transform=ToTensor()
    )
    test_data = FashionMNIST(
        root=tmp_path / "data", train=False, download=True, transform=ToTensor()
    )
    assert (len(training_data), len(test_data)) == (60000, 10000)
    X, y = next(iter(torch.utils.data.DataLoader(test_data, batch_size=64)))
    assert X.shape == torch.Size([64, 1, 28, 28]) and X.dtype == torch.float32
    assert y.dtype == torch.int64
    assert training_data.classes[y[0]] == "Ankle boot"


@realdata
def test_real_class_balance_and_first_test_label():
    _need_real()
    x, y = load_arrays("fashion-mnist", "train")
    xt, yt = load_arrays("fashion-mnist", "test")
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28)
    assert np.bincount(y).tolist() == [6000] * 10
    assert np.bincount(yt).tolist() == [1000] * 10
    assert get_spec("fashion-mnist").classes[yt[0]] == "Ankle boot"
    assert len(dataset_fingerprint()) == 64


def test_a_named_data_folder_must_exist(env: dict[str, Path]) -> None:
    # a typo in --data-dir must not silently fall through to another copy of the data
    with pytest.raises(ConfigError, match="does not exist or is not a folder"):
        load_arrays("fashion-mnist", "train", env["data"] / "typo")
