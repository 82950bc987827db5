"""Dataset specs: each MNIST-family dataset's files, their hashes, classes and mirrors."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fmnist.errors import ConfigError

SPLITS = ("train", "test")
KINDS = ("images", "labels")



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
    keras_folder: str | None = None  # under ~/.keras/datasets/, where Keras keeps its IDX copy
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
        keras_folder="fashion-mnist",  # keras.datasets.fashion_mnist (MNIST's is one .npz)
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
        raise ConfigError(
            f"Unknown dataset {name!r}; valid names are: {valid}, or csv:PATH (Kaggle's CSV "
            "files) and folder:DIR (a folder of images per class)."
        ) from None


def cache_dir() -> Path:
    """Where downloads, the verification record and decoded arrays live."""
    env = os.environ.get("FMNIST_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("fmnist"))

