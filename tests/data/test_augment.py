"""Photo augmentation on batches: RandomResizedCrop by roi_align, TrivialAugment/RandAugment,
both seeded by the training generator."""

import pytest
import torch
from pydantic import ValidationError

from kdpipe.config import AugmentConfig
from kdpipe.data.augment import auto_augment, random_resized_crop
from kdpipe.data.batches import BatchTransform, augment_uint8
from kdpipe.data.prepared import PreparedMeta


def ramp(b=4, c=3, h=16, w=16) -> torch.Tensor:
    """Each pixel's value is its column: a crop's columns show where it was cut."""
    return torch.arange(w, dtype=torch.float32).expand(b, c, h, w).clone()


def test_a_whole_image_box_is_the_identity():
    x = torch.rand(3, 3, 12, 12)
    out = random_resized_crop(x, (1.0, 1.0), (1.0, 1.0), torch.Generator().manual_seed(0))
    assert torch.allclose(out, x, atol=1e-5)


def test_crops_are_inside_the_image_of_the_drawn_size_and_seeded():
    x = ramp()
    out = random_resized_crop(x, (0.25, 0.25), (1.0, 1.0), torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    for image in out:  # a 8x8 window scaled up 2x: its columns span 8 of the 16
        span = image[0, 0, -1] - image[0, 0, 0]
        assert 6.5 <= span <= 8.0 and image.min() >= -0.5 and image.max() <= 15.5
    again = random_resized_crop(x, (0.25, 0.25), (1.0, 1.0), torch.Generator().manual_seed(1))
    other = random_resized_crop(x, (0.25, 0.25), (1.0, 1.0), torch.Generator().manual_seed(2))
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_auto_augment_is_per_image_uint8_and_repeats_with_the_seed():
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    state = torch.random.get_rng_state()
    for kind in ("trivial", "randaugment"):
        out = auto_augment(images, kind, torch.Generator().manual_seed(5))
        assert out.dtype == torch.uint8 and out.shape == images.shape
        assert torch.equal(out, auto_augment(images, kind, torch.Generator().manual_seed(5)))
        changed = [not torch.equal(a, b) for a, b in zip(out, images)]
        assert 0 < sum(changed)  # (TrivialAugment's identity op may leave some images as they were)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left as it was


def test_the_training_transform_and_the_cached_views_apply_them():
    meta = PreparedMeta("toy", ["a", "b"], 3, 16, 16, [0.5] * 3, [0.25] * 3, {})
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    augment = AugmentConfig(crop_padding=0, resized_crop_scale=(0.3, 1.0), auto_augment="trivial")
    transform = BatchTransform(meta, torch.device("cpu"), channels_last=False)
    plain = transform(images)
    a = transform(images, augment, torch.Generator().manual_seed(3))
    b = transform(images, augment, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, plain)
    views = augment_uint8(images, augment, torch.Generator().manual_seed(3), transform.mean)
    assert views.dtype == torch.uint8 and views.shape == images.shape


def test_ranges_are_checked():
    with pytest.raises(ValidationError, match=r"resized_crop_scale \[0.5, 0.2\] must be"):
        AugmentConfig(resized_crop_scale=(0.5, 0.2))
    with pytest.raises(ValidationError, match="resized_crop_ratio"):
        AugmentConfig(resized_crop_ratio=(0.0, 1.0))
    with pytest.raises(ValidationError, match="auto_augment"):
        AugmentConfig(auto_augment="autoaugment")
