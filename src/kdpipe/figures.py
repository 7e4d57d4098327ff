"""The figures stage: what the top-level plots of dvc.yaml draw, from the evaluate stage's
results (no model is loaded or timed here, so drawing costs seconds).

``plots/evaluate/`` gets the model table (bar and Pareto plots), predictions (confusion),
per-class accuracy, reliability diagrams, top-k curves, classification reports, seaborn
confusion heatmaps and feature-map images.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from kdpipe import paths
from kdpipe.config import EvaluateConfig, Params
from kdpipe.errors import MissingInputError
from kdpipe.eval_outputs import EvalOutputs, FeatureMaps, load_eval_outputs
from kdpipe.io import atomic_path, read_json, write_json
from kdpipe.metrics import per_class_accuracy, reliability, report, topk_curve

PLOTS_DIR = paths.PLOTS_DIR / "evaluate"
# PNGs carry no creation time, so the same run writes the same bytes.
PNG_METADATA = {"Software": None}


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata=PNG_METADATA, bbox_inches="tight")
    plt.close(fig)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


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


def feature_map_png(fm: FeatureMaps, images: np.ndarray, captions: list[str], title: str, path: Path) -> None:
    """Each image (rows) beside the activations of the shown channels (columns)."""
    rows, cols = len(images), len(fm.channels) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows), squeeze=False)
    for r in range(rows):
        image = images[r].transpose(1, 2, 0)
        axes[r, 0].imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray")
        axes[r, 0].set_ylabel(captions[r], fontsize=7)
        for c, channel in enumerate(fm.channels, start=1):
            axes[r, c].imshow(fm.maps[r, c - 1], cmap="viridis")
            if r == 0:
                axes[r, c].set_title(f"ch {channel}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def write_model_figures(name: str, logits: np.ndarray, outputs: EvalOutputs, cfg: EvaluateConfig) -> None:
    labels, class_names = outputs.labels, outputs.class_names
    pred = logits.argmax(1)
    write_csv(PLOTS_DIR / f"predictions_{name}.csv", ["actual", "predicted"],
              [[class_names[a], class_names[p]] for a, p in zip(labels, pred)])
    per_class = per_class_accuracy(labels, pred, class_names)
    write_csv(PLOTS_DIR / "per_class" / f"{name}.csv", ["class", "accuracy"],
              [[c, a] for c, a in per_class.items() if a is not None])
    write_csv(PLOTS_DIR / "reliability" / f"{name}.csv", ["confidence", "accuracy"],
              [[b["confidence"], b["accuracy"]] for b in reliability(labels, logits, cfg.ece_bins)])
    write_csv(PLOTS_DIR / "topk" / f"{name}.csv", ["k", "accuracy"],
              [[t["k"], t["accuracy"]] for t in topk_curve(labels, logits, max(cfg.topk, 5))])
    rep = {**report(labels, pred, class_names), "per_class_accuracy": per_class}
    write_json(PLOTS_DIR / "reports" / f"{name}.json", rep)
    confusion_png(rep["confusion_matrix"], class_names, f"{name} (test)", PLOTS_DIR / "confusion" / f"{name}.png")


def run_figures(params: Params) -> None:
    cfg = params.evaluate
    outputs = load_eval_outputs()
    if not paths.EVALUATE_DETAIL.is_file():
        raise MissingInputError(f"{paths.EVALUATE_DETAIL} is missing: run the evaluate stage first (`dvc repro evaluate`)")
    detail = read_json(paths.EVALUATE_DETAIL)
    batch = cfg.throughput_batch
    write_csv(PLOTS_DIR / "models.csv", ["model", "accuracy", "size_mb", "latency_ms", "throughput"],
              [[n, r["accuracy"], r["size_mb"], r["latency_ms"], r[f"throughput_b{batch}"]] for n, r in detail.items()])
    for name, logits in outputs.logits.items():
        write_model_figures(name, logits, outputs, cfg)
    for name, by_label in outputs.feature_maps.items():
        for label, fm in by_label.items():
            title = f"{name} ({detail[name]['arch']}) {label} layer '{fm.layer}': most active channels"
            feature_map_png(fm, outputs.images, outputs.captions, title, PLOTS_DIR / "feature_maps" / f"{name}_{label}.png")
