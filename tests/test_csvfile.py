"""`--dataset csv:PATH`: Kaggle's `label,pixel1,...,pixel784` files, small ones made here."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from fmnist import datasets
from fmnist.cli import main
from fmnist.datasets import csvfile
from fmnist.errors import ConfigError, DatasetError

HEADER = "label," + ",".join(f"pixel{i}" for i in range(1, 785))


def csv_text(images: np.ndarray, labels: np.ndarray, header: bool = True) -> str:
    rows = [",".join(map(str, [int(y), *x.reshape(-1).tolist()]))
            for x, y in zip(images, labels, strict=True)]
    return "\n".join(([HEADER] if header else []) + rows) + "\n"


def arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.int64) % 10


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMNIST_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def kaggle(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Kaggle's two files, with 12 and 5 rows."""
    folder = tmp_path / "kaggle"
    folder.mkdir()
    data = {"train": arrays(12, 1), "test": arrays(5, 2)}
    for split, (x, y) in data.items():
        (folder / f"fashion-mnist_{split}.csv").write_text(csv_text(x, y))
    return folder, data


def test_reads_kaggle_files_from_their_folder_or_one_file(kaggle):
    folder, data = kaggle
    for name in (f"csv:{folder}", f"csv:{folder / 'fashion-mnist_train.csv'}"):
        for split, (x, y) in data.items():
            images, labels = datasets.load_arrays(name, split)
            assert images.dtype == np.uint8 and labels.dtype == np.int64
            np.testing.assert_array_equal(images, x)
            np.testing.assert_array_equal(labels, y)
    assert datasets.class_names(f"csv:{folder}")[9] == "Ankle boot"


def test_windows_line_ends_and_gzip_are_read(tmp_path):
    x, y = arrays(3)
    text = csv_text(x, y).replace("\n", "\r\n")
    (tmp_path / "a_train.csv.gz").write_bytes(gzip.compress(text.encode()))
    np.testing.assert_array_equal(datasets.load_arrays(f"csv:{tmp_path}", "train")[0], x)


def test_classes_follow_the_file_names_dataset(tmp_path):
    x, y = arrays(2)
    (tmp_path / "mnist_train.csv").write_text(csv_text(x, y))
    assert datasets.class_names(f"csv:{tmp_path}")[0] == "0 - zero"


def test_same_pixels_give_the_idx_fingerprint(kaggle):
    """A CSV holding the IDX files' pixels is the same data: same fingerprint."""
    folder, data = kaggle
    hashes = {}
    for split, (x, y) in data.items():
        hashes[f"{split}-images"] = datasets.content_sha256(x)
        hashes[f"{split}-labels"] = datasets.content_sha256(y.astype(np.uint8))
    from fmnist.datasets.idx import fingerprint_of

    assert datasets.dataset_fingerprint(f"csv:{folder}") == fingerprint_of(hashes)
    x, y = data["test"]
    (folder / "fashion-mnist_test.csv").write_text(csv_text(x[::-1], y[::-1]))
    assert datasets.dataset_fingerprint(f"csv:{folder}") != fingerprint_of(hashes)


def test_second_load_comes_from_the_cache_and_a_change_is_seen(kaggle, monkeypatch):
    folder, data = kaggle
    datasets.load_arrays(f"csv:{folder}", "train")

    def boom(*a, **k):
        raise AssertionError("a warm load must not parse the CSV")

    with monkeypatch.context() as m:
        m.setattr(csvfile, "parse_csv", boom)
        np.testing.assert_array_equal(datasets.load_arrays(f"csv:{folder}", "train")[0],
                                      data["train"][0])
    x, y = arrays(4, 7)
    (folder / "fashion-mnist_train.csv").write_text(csv_text(x, y))
    np.testing.assert_array_equal(datasets.load_arrays(f"csv:{folder}", "train")[0], x)


def _row(values: list[str]) -> str:
    return ",".join(values)


GOOD = ["3", *(["0"] * 784)]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([_row(GOOD), _row(GOOD[:-1])], r"has 784 values on line 3, expected 785"),
        ([_row(GOOD), _row([*GOOD[:10], "x7", *GOOD[11:]])],
         r"has 'x7' at line 3, column 11 \(pixel10\), not a whole number from 0 to 255"),
        ([_row([*GOOD[:5], "1.5", *GOOD[6:]])], r"has '1.5' at line 2, column 6 \(pixel5\)"),
        ([_row([*GOOD[:5], "99999999999", *GOOD[6:]])],
         r"has '99999999999' at line 2, column 6 \(pixel5\), not a whole number from 0 to 255"),
        ([_row([*GOOD[:5], "", *GOOD[6:]])], r"has an empty value at line 2, column 6"),
        ([_row(GOOD), "", _row([*GOOD[:-1], "300"])],
         r"has pixel value 300 at line 4, column 785 \(pixel784\), outside 0 to 255"),
        ([_row([*GOOD[:3], "-1", *GOOD[4:]])], r"has pixel value -1 at line 2, column 4 \(pixel3\), outside 0 to 255"),
        ([_row([*GOOD[:3], '"7"', *GOOD[4:]])], r"has '\"7\"' at line 2, column 4"),
        ([_row(GOOD), _row(["10", *GOOD[1:]])],
         r"has label 10 at line 3, out of range for 10 classes \(0 to 9\)"),
        ([_row([*GOOD[:-1], "256"])], r"has pixel value 256 at line 2, column 785 \(pixel784\)"),
        ([_row(GOOD[:-1]), _row(GOOD[:-1])], r"has 784 values on line 2, expected 785"),
    ],
    ids=["short-row", "non-numeric", "decimal", "overflow", "empty-value", "blank-line-then-range",
         "negative", "quoted", "label-range", "pixel-range", "all-rows-short"],
)
def test_a_bad_line_is_named_and_nothing_is_cached(tmp_path, lines, message):
    path = tmp_path / "fashion-mnist_train.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    with pytest.raises(DatasetError, match=rf"^CSV file {path} {message}.*\.$"):
        datasets.load_arrays(f"csv:{path}", "train")
    assert not list((datasets.cache_dir() / "decoded").glob("csv-*"))


def test_a_missing_header_is_named(tmp_path):
    x, y = arrays(2)
    path = tmp_path / "fashion-mnist_train.csv"
    path.write_text(csv_text(x, y, header=False))
    with pytest.raises(DatasetError, match=r"has no header: its first line is data; add the line"):
        datasets.load_arrays(f"csv:{path}", "train")
    path.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(DatasetError, match=r"does not start with the header 'label,pixel1"):
        datasets.load_arrays(f"csv:{path}", "train")


def test_which_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        datasets.load_arrays(f"csv:{tmp_path / 'nope.csv'}", "train")
    with pytest.raises(ConfigError, match="holds no CSV file with 'train' or 'test'"):
        datasets.load_arrays(f"csv:{tmp_path}", "train")
    x, y = arrays(2)
    (tmp_path / "a_train.csv").write_text(csv_text(x, y))
    with pytest.raises(ConfigError, match=f"No test CSV file in {tmp_path}"):
        datasets.load_arrays(f"csv:{tmp_path}", "test")
    (tmp_path / "b_train.csv").write_text(csv_text(x, y))
    with pytest.raises(ConfigError, match="several train CSV files"):
        datasets.load_arrays(f"csv:{tmp_path}", "train")
    both = tmp_path / "train_test_split.csv"
    both.write_text(csv_text(x, y))
    with pytest.raises(ConfigError, match="exactly one of 'train' and 'test' in its name"):
        datasets.load_arrays(f"csv:{both}", "train")
    with pytest.raises(ConfigError, match="drop --data-dir"):
        datasets.load_arrays(f"csv:{tmp_path}", "train", tmp_path)


def test_cli_info_and_a_bad_file_exit_2(kaggle, capsys):
    folder, _ = kaggle
    assert main(["data", "info", "--dataset", f"csv:{folder}"]) == 0
    out = capsys.readouterr().out
    assert "Fashion-MNIST (CSV)" in out and "found in csv" in out
    assert "train     12 images 28x28" in out
    assert main(["data", "fetch", "--dataset", f"csv:{folder}"]) == 0
    assert "ready (csv, decoded and cached)" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="Nothing to fetch"):
        datasets.fetch(f"csv:{folder}")
    (folder / "fashion-mnist_test.csv").write_text(HEADER + "\n1,2\n")
    assert main(["data", "info", "--dataset", f"csv:{folder}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fmnist: error: CSV file ") and err.count("\n") == 1
