"""The out-of-distribution check's handwritten digits (fmnist.ood.digits): scikit-learn's own
images, read from the file it ships without importing it (the import costs seconds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fmnist import ood

pytest.importorskip("sklearn")
SRC = Path(__file__).resolve().parents[1] / "src"


def test_the_digits_are_scikit_learns_images_in_its_order() -> None:
    from sklearn.datasets import load_digits

    theirs = load_digits().images
    ours = ood.bundled_digits()
    assert ours.shape == theirs.shape == (1797, 8, 8)
    np.testing.assert_array_equal(ours, theirs)


def test_reading_the_digits_leaves_scikit_learn_unimported() -> None:
    code = ("import sys; from fmnist import ood; x = ood.digits(limit=3); "
            "print(x.shape, x.dtype, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC), "PATH": ""}).stdout
    assert out.split() == ["(3,", "28,", "28)", "uint8", "False"]
