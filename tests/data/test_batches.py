import torch

from kdpipe.config import AugmentConfig
from kdpipe.data.batches import BatchTransform, iterate_batches, num_batches, random_crop
from kdpipe.data.prepared import PreparedMeta, Split


def meta(c=1):
    return PreparedMeta("t", ["a", "b"], c, 4, 4, [0.5] * c, [0.25] * c, {})


def test_random_crop_is_a_shift_of_the_padded_image():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, 1, g)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    windows = {(i, j): padded[0, 0, i : i + 4, j : j + 4] for i in range(3) for j in range(3)}
    found = set()
    for img in out:
        match = [k for k, w in windows.items() if torch.equal(img[0], w)]
        assert match, "every crop is one of the 9 shifted windows"
        found.add(match[0])
    assert len(found) > 4  # offsets really vary
    assert torch.equal(random_crop(x, 0, g), x)


def test_augmentation_is_seeded():
    x = torch.randint(0, 255, (32, 3, 4, 4), dtype=torch.uint8)
    t = BatchTransform(meta(3), torch.device("cpu"), channels_last=True)
    aug = AugmentConfig(crop_padding=1, hflip=True)
    a = t(x, aug, torch.Generator().manual_seed(7))
    b = t(x, aug, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.is_contiguous(memory_format=torch.channels_last)
    plain = t(x)
    assert torch.allclose(plain, (x.float() / 255 - 0.5) / 0.25)


def test_batches_cover_everything_once_or_drop_a_ragged_tail():
    split = Split(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.arange(10))
    seen = torch.cat([y for _, y in iterate_batches(split, 4)])
    assert torch.equal(seen, torch.arange(10)) and num_batches(10, 4, False) == 3
    g = torch.Generator().manual_seed(0)
    kept = [y for _, y in iterate_batches(split, 4, shuffle=True, generator=g, drop_last=True)]
    assert [len(y) for y in kept] == [4, 4] and num_batches(10, 4, True) == 2
    assert len(set(torch.cat(kept).tolist())) == 8


def test_cutout_masks_one_square_per_image_with_the_fill():
    import torch

    from kdpipe.data.batches import random_cutout

    x = torch.ones(64, 3, 16, 16)
    fill = torch.zeros(1, 3, 1, 1)
    out = random_cutout(x, 4, fill, torch.Generator().manual_seed(0))
    masked = (out == 0).all(1)  # (B, H, W): all channels filled together
    sizes = masked.flatten(1).sum(1)
    assert sizes.max() == 16 and sizes.min() >= 4  # a full 4x4 square, clipped at the borders
    assert len({tuple(m.nonzero()[0].tolist()) for m in masked}) > 10  # centres differ per image
    assert torch.equal(random_cutout(x, 0, fill, torch.Generator()), x)
    again = random_cutout(x, 4, fill, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_prefetch_keeps_order_stops_early_and_raises_where_consumed():
    import threading

    import pytest

    from kdpipe.data.batches import prefetch

    assert list(prefetch(iter(range(50)), depth=2)) == list(range(50))
    before = threading.active_count()
    consumer = prefetch(iter(range(1000)), depth=2)
    assert [next(consumer) for _ in range(3)] == [0, 1, 2]
    consumer.close()  # a consumer that stops early leaves no thread behind
    assert threading.active_count() == before

    def failing():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetch(failing()))


def test_a_reflect_padded_crop_shows_the_image_mirrored_never_black():
    x = (torch.arange(16, dtype=torch.uint8) + 100).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    zeros = random_crop(x, 2, torch.Generator().manual_seed(0))
    mirrored = random_crop(x, 2, torch.Generator().manual_seed(0), mode="reflect")
    assert (zeros == 0).any() and (mirrored >= 100).all()
    # same windows: where the zero-padded crop saw the image, the mirrored one sees the same pixels
    assert torch.equal(mirrored[zeros > 0], zeros[zeros > 0])
