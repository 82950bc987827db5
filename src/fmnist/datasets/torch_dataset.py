"""torchvision-compatible `Dataset` classes (`FashionMNIST(root, train=..., transform=...)`)
and `ToTensor`, so the Quickstart's own code runs on fmnist without torchvision."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fmnist.datasets.finding import idx_arrays, locate
from fmnist.datasets.specs import DEFAULT_DATASET, get_spec
from fmnist.errors import DatasetError


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
        images, labels = idx_arrays(loc, split)
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
