"""The training steps' batches: shuffled indices, augmentation on the device, this DDP rank's
shard, and what the method declares it needs (sample indices, cached teacher logits)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from kdpipe.config import AugmentConfig
from kdpipe.data.batches import BatchTransform, batch_indices, num_batches, prefetch, take
from kdpipe.data.prepared import Split
from kdpipe.engine.teacher_cache import TeacherCache
from kdpipe.methods import Batch


class StepLoader:
    def __init__(
        self, train: Split, transform: BatchTransform, augment: AugmentConfig, batch_size: int, shard: slice,
        generators: dict[str, torch.Generator], device: torch.device, cache: TeacherCache | None = None,
        with_indices: bool = False,
    ):
        self.train, self.transform, self.augment = train, transform, augment
        self.batch_size, self.shard, self.device = batch_size, shard, device
        self.shuffle, self.augment_gen = generators["shuffle"], generators["augment"]
        self.cache, self.with_indices = cache, with_indices
        self.steps = num_batches(len(train), batch_size, drop_last=True)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        train, shard, device = self.train, self.shard, self.device
        k = self.cache.view(epoch) if self.cache is not None else None
        source = train.images if self.cache is None else self.cache.views[k]
        # every rank reads and augments the whole global batch (same generator) and keeps its
        # shard, so the images seen are those of a single-process run; the epoch's cached view
        # (with the teacher's logits on it) is read for the shard only
        reads = (
            (idx, take(source, idx) if self.cache is None else take(source, idx[shard]))
            for idx in batch_indices(len(train), self.batch_size, shuffle=True, generator=self.shuffle, drop_last=True)
        )
        for idx, raw in prefetch(reads):  # the next batch is read from the (memory-mapped) split meanwhile
            labels = train.labels[idx].to(device, non_blocking=True)[shard]
            cached = None
            if self.cache is None:
                images = self.transform(raw, self.augment, self.augment_gen)[shard]
            else:
                images = self.transform(raw)
                cached = self.cache.logits[k][idx[shard]].to(device, non_blocking=True)
            indices = idx[shard].to(device, non_blocking=True) if self.with_indices else None
            yield Batch(images, labels, indices, cached)
