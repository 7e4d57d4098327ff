"""Photo augmentation on whole batches, seeded: RandomResizedCrop and TrivialAugment/RandAugment.

``random_resized_crop`` draws one box per image as torchvision's ``RandomResizedCrop`` does (area
share from ``scale``, aspect ratio log-uniform in ``ratio``, ten tries, else the whole image) and
cuts and resizes every box in one ``torchvision.ops.roi_align`` call, on the batch's device.
``auto_augment`` runs torchvision's ``v2.TrivialAugmentWide`` / ``v2.RandAugment`` on each uint8
image, seeded from the training generator so runs repeat exactly.
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import roi_align

TRIES = 10  # as torchvision's RandomResizedCrop.get_params


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float],
                        generator: torch.Generator) -> torch.Tensor:
    """Float images (B, C, H, W) -> a random crop of each, resized back to (H, W) bilinearly."""
    b, _, h, w = x.shape
    dev = generator.device
    share = torch.empty(b, TRIES, device=dev).uniform_(scale[0], scale[1], generator=generator)
    aspect = torch.exp(torch.empty(b, TRIES, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                                   generator=generator))
    crop_w, crop_h = torch.sqrt(h * w * share * aspect), torch.sqrt(h * w * share / aspect)
    fits = (crop_w <= w) & (crop_h <= h)
    first = fits.int().argmax(dim=1)
    rows = torch.arange(b, device=dev)
    found = fits.any(dim=1)
    crop_w = torch.where(found, crop_w[rows, first], torch.full_like(crop_w[:, 0], w))
    crop_h = torch.where(found, crop_h[rows, first], torch.full_like(crop_h[:, 0], h))
    left = torch.rand(b, device=dev, generator=generator) * (w - crop_w)
    top = torch.rand(b, device=dev, generator=generator) * (h - crop_h)
    boxes = torch.stack([rows.float(), left, top, left + crop_w, top + crop_h], dim=1).to(x.device, x.dtype)
    # aligned=True: a box of the whole image samples every pixel centre exactly (an identity)
    return roi_align(x, boxes, output_size=(h, w), spatial_scale=1.0, sampling_ratio=0, aligned=True)


def auto_augment(images: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """uint8 images (B, C, H, W) -> each through one TrivialAugment ("trivial") or RandAugment
    ("randaugment") policy draw; torchvision draws from the global RNG, forked and seeded here."""
    from torchvision.transforms import v2

    policy = v2.TrivialAugmentWide() if kind == "trivial" else v2.RandAugment()
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = torch.stack([policy(image) for image in images.cpu()])
    return out.to(images.device)
