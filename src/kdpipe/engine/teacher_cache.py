"""Cached teacher outputs (``<link>.cache_views: K``): K fixed augmented views of every training
image, with the teacher's logits on each computed once before training.

Epoch e trains on view (e - 1) mod K, so a step runs the student alone. The trade-off (Beyer et
al., 2022, "Knowledge distillation: a good teacher is patient and consistent"): the student sees
only K augmentations per image instead of a fresh one each epoch, and distillation is best when
teacher and student see the same, freshly augmented view, so accuracy can drop against the live
teacher in long schedules; what it buys is one teacher forward per view instead of one per epoch.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from kdpipe.config import AugmentConfig
from kdpipe.data.batches import BatchTransform, augment_uint8
from kdpipe.data.prepared import Split

log = logging.getLogger("kdpipe")


@dataclass
class TeacherCache:
    views: list[torch.Tensor]  # K x uint8 (N, C, H, W), already augmented, over an unnamed temporary file
    logits: list[torch.Tensor]  # K x float32 (N, classes), the teacher's on those views
    seconds: float

    def view(self, epoch: int) -> int:
        return (epoch - 1) % len(self.views)


def disk_views(count: int, shape: tuple[int, ...]) -> list[torch.Tensor]:
    """``count`` uint8 tensors of ``shape`` over one unnamed temporary file (deleted when the last
    view is dropped): K augmented copies of a large training set stay out of the process's memory."""
    with tempfile.TemporaryFile(prefix="kdpipe-views-") as file:
        array = np.memmap(file, dtype=np.uint8, mode="w+", shape=(count, *shape))  # the mapping outlives the file
    return [torch.from_numpy(array[k]) for k in range(count)]


@torch.no_grad()
def build_teacher_cache(
    teacher: torch.nn.Module, split: Split, transform: BatchTransform, augment: AugmentConfig, views: int,
    generator: torch.Generator, autocast, batch_size: int,
) -> TeacherCache:
    start = time.perf_counter()
    teacher.eval()
    all_views = disk_views(views, tuple(split.images.shape))
    all_logits = []
    for k in tqdm(range(views), desc="teacher cache", unit="view", disable=None, leave=False):
        logits = []
        for begin in range(0, len(split), batch_size):
            images = augment_uint8(split.images[begin : begin + batch_size], augment, generator, transform.mean)
            with autocast():
                logits.append(teacher(transform(images)).float().cpu())
            all_views[k][begin : begin + batch_size] = images.cpu()
        all_logits.append(torch.cat(logits))
    seconds = time.perf_counter() - start
    log.info("teacher cache: %d view(s) of %d images in %.1fs", views, len(split), seconds)
    return TeacherCache(all_views, all_logits, seconds)
