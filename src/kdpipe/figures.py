"""Static figures of the evaluate stage (PNG, matplotlib/seaborn): confusion heatmaps and
feature maps of an early and a middle layer for a fixed set of test images."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

from kdpipe.io import atomic_path
from kdpipe.methods.common.features import FeatureTap, default_stages

CHANNELS_SHOWN = 8
# PNGs carry no creation time, so the same run writes the same bytes.
PNG_METADATA = {"Software": None}


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata=PNG_METADATA, bbox_inches="tight")
    plt.close(fig)


def confusion_png(matrix: list[list[int]], class_names: list[str], title: str, path: Path) -> None:
    n = len(class_names)
    size = min(4 + 0.45 * n, 24)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    sns.heatmap(np.asarray(matrix), annot=n <= 20, fmt="d", cmap="Blues", cbar=True, square=True,
                xticklabels=class_names, yticklabels=class_names, ax=ax)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    _save(fig, path)


def pick_images(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of the first image of each class, in class order, then further images: fixed
    across runs and models, and spread over the classes."""
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]
    rest = [i for i in range(len(labels)) if i not in set(firsts)]
    return np.array((firsts + rest)[:count])


@torch.no_grad()
def feature_map_pngs(
    model: torch.nn.Module, arch: str, x: np.ndarray, raw: np.ndarray, captions: list[str], name: str, out_dir: Path
) -> list[Path]:
    """For the early and the middle stage of ``model``: each image (rows) beside the activations
    of the channels most active over the shown images (columns)."""
    stages = default_stages(arch)
    layers = {"early": stages[0], "middle": stages[1]}  # stage 2 of 4: still spatial on 8-px inputs
    tap = FeatureTap(model, list(layers.values()), where=f"feature maps of {name}")
    try:
        model.eval()(torch.from_numpy(x))
        outputs = {label: tap.outputs[layer].float().numpy() for label, layer in layers.items()}
    finally:
        tap.remove()
    written = []
    for label, maps in outputs.items():
        top = np.argsort(-maps.mean(axis=(0, 2, 3)), kind="stable")[:CHANNELS_SHOWN]
        rows, cols = len(x), len(top) + 1
        fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows), squeeze=False)
        for r in range(rows):
            image = raw[r].transpose(1, 2, 0)
            axes[r, 0].imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray")
            axes[r, 0].set_ylabel(captions[r], fontsize=7)
            for c, channel in enumerate(top, start=1):
                axes[r, c].imshow(maps[r, channel], cmap="viridis")
                if r == 0:
                    axes[r, c].set_title(f"ch {channel}", fontsize=7)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"{name} ({arch}) {label} layer '{layers[label]}': most active channels", fontsize=9)
        path = out_dir / f"{name}_{label}.png"
        _save(fig, path)
        written.append(path)
    return written
