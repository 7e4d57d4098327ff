"""Batched inference over a prepared split."""

from __future__ import annotations

import torch
from torch import nn

from kdpipe.data.batches import BatchTransform, iterate_batches
from kdpipe.data.prepared import Split


@torch.no_grad()
def predict_logits(
    model: nn.Module, split: Split, transform: BatchTransform, batch_size: int, autocast=None
) -> torch.Tensor:
    """fp32 logits on the CPU for every image of ``split``, in order."""
    was_training = model.training
    model.eval()
    outputs = []
    for images, _ in iterate_batches(split, batch_size):
        x = transform(images)
        if autocast is not None:
            with autocast():
                out = model(x)
        else:
            out = model(x)
        outputs.append(out.float().cpu())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)
