"""Fast in-memory batches: the whole dataset lives as one uint8 tensor on the device.

A per-sample `Dataset` + `DataLoader` spends most of a small model's step in Python (PIL
conversion, collation). Here an epoch is one permutation and each batch is one gather, one
normalisation and one batched augmentation.

Shuffling and augmentation draw from generators seeded by (seed, epoch) alone, for the whole
epoch at once, before sharding. So an epoch's order and augmentations do not depend on the
number of processes (rank r takes positions r, r+W, r+2W, ...), and resuming at an epoch
boundary replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fmnist.inference import to_input


@dataclass(frozen=True)
class Augment:
    shift: int = 0  # random translation of up to `shift` pixels in x and y (zero padding)
    flip: bool = False  # random horizontal flip with p=0.5

    @property
    def active(self) -> bool:
        return self.shift > 0 or self.flip


class Batches:
    """Iterate (x, y) batches over uint8 images (N, 28, 28) and int64 labels (N,).

    x is normalised float32 (B, 1, 28, 28) on the images' device, y int64 (B,).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        mean: float = 0.0,
        std: float = 1.0,
        shuffle: bool = True,
        drop_last: bool = False,
        augment: Augment = Augment(),
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels
        self.batch_size, self.mean, self.std = batch_size, mean, std
        self.shuffle, self.drop_last, self.augment = shuffle, drop_last, augment
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.channels_last = channels_last
        self.epoch = 0
        self.start = 0  # the first batch an epoch yields (a run resumed part-way through one)
        if augment.shift:
            # Pad once, up front: each batch then crops with one gather instead of padding.
            s = augment.shift
            self.padded = torch.nn.functional.pad(images, (s, s, s, s))

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Batches of `epoch` from its batch `start` on: the same batches an uninterrupted
        epoch yields there, as every random draw is made for the whole epoch first."""
        self.epoch, self.start = epoch, start

    @property
    def samples_per_rank(self) -> int:
        # Every rank gets the same count (DDP needs equal step counts); the few samples past a
        # multiple of world_size are left out of the epoch, as DistributedSampler(drop_last) does.
        return len(self.images) // self.world_size

    def __len__(self) -> int:
        n, b = self.samples_per_rank, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.images)
        g = self._generator()
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        shifts = flips = None
        if self.augment.shift:
            s = self.augment.shift
            shifts = torch.randint(0, 2 * s + 1, (n, 2), generator=g)
        if self.augment.flip:
            flips = torch.rand(n, generator=g) < 0.5
        positions = torch.arange(self.rank, self.samples_per_rank * self.world_size, self.world_size)
        device = self.images.device
        for i in range(self.start, len(self)):
            pos = positions[i * self.batch_size : (i + 1) * self.batch_size]
            idx = order[pos].to(device)
            if shifts is not None:
                images = self._crop(idx, shifts[pos].to(device))
            else:
                images = self.images[idx]
            x = to_input(images, self.mean, self.std)
            if flips is not None:
                f = flips[pos].to(device)
                x = torch.where(f[:, None, None, None], x.flip(-1), x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]

    def _crop(self, idx: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
        """Crop 28x28 windows at per-image offsets from the padded images: one gather."""
        ar = torch.arange(28, device=idx.device)
        rows = (shifts[:, 0:1] + ar)[:, :, None]  # (B, 28, 1)
        cols = (shifts[:, 1:2] + ar)[:, None, :]  # (B, 1, 28)
        return self.padded[idx[:, None, None], rows, cols]  # (B, 28, 28)
