import torch

from fmnist.loader import Augment, Batches


def ids_dataset(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose pixel (0, 0) encodes nothing; labels are sample ids, to track order."""
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return images, torch.arange(n)


def seen(batches: Batches) -> list[int]:
    return [int(i) for _, y in batches for i in y]


def test_every_sample_once_per_epoch_and_order_depends_on_epoch():
    images, labels = ids_dataset(103)
    b = Batches(images, labels, 10, seed=3)
    first = seen(b)
    assert sorted(first) == list(range(103)) and len(b) == 11
    assert seen(b) == first  # same epoch, same order
    b.set_epoch(1)
    assert seen(b) != first and sorted(seen(b)) == list(range(103))


def test_no_shuffle_keeps_order_and_drop_last():
    images, labels = ids_dataset(25)
    assert seen(Batches(images, labels, 10, shuffle=False)) == list(range(25))
    assert len(Batches(images, labels, 10, drop_last=True)) == 2


def test_shards_split_the_single_process_order_independently_of_world_size():
    images, labels = ids_dataset(64)
    aug = Augment(shift=2, flip=True)
    single = Batches(images, labels, 8, seed=5, augment=aug)
    ranks = [Batches(images, labels, 4, seed=5, augment=aug, rank=r, world_size=2) for r in (0, 1)]
    for (x1, y1), (xa, ya), (xb, yb) in zip(single, *ranks, strict=True):
        # global batch k of one process = rank 0's and rank 1's batch k, interleaved
        assert torch.equal(y1[0::2], ya) and torch.equal(y1[1::2], yb)
        assert torch.equal(x1[0::2], xa) and torch.equal(x1[1::2], xb)


def test_uneven_shards_have_equal_lengths():
    images, labels = ids_dataset(11)
    ranks = [seen(Batches(images, labels, 2, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 5
    assert not set(ranks[0]) & set(ranks[1])


def test_normalisation_and_layout():
    images, labels = ids_dataset(4)
    x, _ = next(iter(Batches(images, labels, 4, shuffle=False, mean=0.5, std=0.25)))
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32
    expected = (images.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x[:, 0], expected)
    x, _ = next(iter(Batches(images, labels, 4, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_shift_crops_are_translations_with_zero_fill():
    images = torch.zeros(200, 28, 28, dtype=torch.uint8)
    images[:, 10:18, 10:18] = 255
    labels = torch.arange(200)
    x, y = next(iter(Batches(images, labels, 200, augment=Augment(shift=2), seed=1)))
    moved = 0
    for img in x[:, 0]:
        rows, cols = torch.nonzero(img > 0.5, as_tuple=True)
        dy, dx = rows.min().item() - 10, cols.min().item() - 10
        assert -2 <= dy <= 2 and -2 <= dx <= 2
        assert (img > 0.5).sum() == 64  # the square is moved, never cut (it's far from the edge)
        moved += (dy, dx) != (0, 0)
    assert moved > 150  # 24 of 25 offsets move the image


def test_flip_mirrors_about_half_of_the_images():
    images = torch.zeros(400, 28, 28, dtype=torch.uint8)
    images[:, :, :5] = 255  # a bar on the left
    x, _ = next(iter(Batches(images, torch.arange(400), 400, augment=Augment(flip=True))))
    flipped = (x[:, 0, :, -1] > 0.5).all(dim=1)
    kept = (x[:, 0, :, 0] > 0.5).all(dim=1)
    assert torch.all(flipped ^ kept)
    assert 150 < int(flipped.sum()) < 250
