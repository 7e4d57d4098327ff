"""Metric names and values on hand-checkable cases (the numbers come from scikit-learn/torchmetrics)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from kdpipe.evaluate import flip_tta_accuracy, pick_images
from kdpipe.metrics import (
    classification_metrics,
    per_class_accuracy,
    reliability,
    report,
    teacher_agreement,
    topk_curve,
)
from kdpipe.model_file import ModelFile


def _logits(pred: list[int], n: int = 3, margin: float = 20.0) -> np.ndarray:
    out = np.zeros((len(pred), n))
    out[np.arange(len(pred)), pred] = margin
    return out


def test_confident_and_right_is_perfect():
    y = np.array([0, 1, 2, 0, 1, 2])
    m = classification_metrics(_logits(list(y)), y, 3, topk=3, ece_bins=10, teacher_logits=_logits(list(y)))
    for key in ("accuracy", "top3_accuracy", "f1_macro", "precision_weighted", "recall_micro", "auc_macro"):
        assert m[key] == pytest.approx(1.0), key
    assert m["nll"] < 1e-6 and m["brier"] < 1e-6 and m["ece"] < 1e-6
    assert m["teacher_agreement"] == 1.0 and m["teacher_kl"] == pytest.approx(0.0, abs=1e-9)


def test_hand_values():
    y = np.array([0, 0, 1, 1])
    logits = _logits([0, 1, 1, 1], n=2)
    m = classification_metrics(logits, y, 2, topk=3, ece_bins=10)
    assert m["accuracy"] == 0.75
    assert "top2_accuracy" in m and m["top2_accuracy"] == 1.0  # k capped at the class count
    # class 0: precision 1, recall 0.5; class 1: precision 2/3, recall 1
    assert m["precision_macro"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-6)
    assert m["recall_macro"] == pytest.approx(0.75)
    # all predictions have confidence ~1, accuracy 0.75: ECE ~ 0.25
    assert m["ece"] == pytest.approx(0.25, abs=1e-3)
    assert "teacher_agreement" not in m


def test_uniform_logits_calibration():
    y = np.array([0, 1, 2, 0, 1, 2])
    m = classification_metrics(np.zeros((6, 3)), y, 3)
    assert m["nll"] == pytest.approx(np.log(3), abs=1e-6)
    assert m["brier"] == pytest.approx(2 / 3, abs=1e-6)  # (1 - 1/3)^2 + 2 (1/3)^2
    assert m["auc_macro"] == pytest.approx(0.5)


def test_auc_over_present_classes_and_none_when_one_class():
    y = np.array([0, 0, 1, 1])  # class 2 absent
    logits = np.array([[3.0, 0, 0], [2, 1, 0], [0, 3, 0], [1, 2, 0]])
    assert classification_metrics(logits, y, 3)["auc_macro"] == 1.0
    assert classification_metrics(logits[:2], y[:2], 3)["auc_macro"] is None


def test_teacher_agreement_counts_disagreements():
    t = _logits([0, 1, 2, 0])
    s = _logits([0, 1, 1, 0])
    out = teacher_agreement(s, t)
    assert out["teacher_agreement"] == 0.75 and out["teacher_kl"] > 1.0


def test_per_class_report_reliability_topk():
    y = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    names = ["a", "b", "c", "d"]
    assert per_class_accuracy(y, pred, names) == {"a": 0.5, "b": 1.0, "c": 0.0, "d": None}
    rep = report(y, pred, names)
    assert rep["confusion_matrix"][0] == [1, 1, 0, 0] and rep["classification_report"]["b"]["recall"] == 1.0
    bins = reliability(y, _logits(list(pred), n=4), bins=10)
    assert bins and all(0 <= b["accuracy"] <= 1 for b in bins)
    curve = topk_curve(y, _logits(list(pred), n=4), max_k=10)
    assert [c["k"] for c in curve] == [1, 2, 3, 4] and curve[-1]["accuracy"] == 1.0
    assert curve[0]["accuracy"] == pytest.approx(0.6)


def test_feature_map_images_cover_the_classes_first():
    labels = np.array([2, 2, 0, 1, 0, 1])
    assert list(pick_images(labels, 4)) == [2, 3, 0, 1]


class _LeftPixelOrTwo(torch.nn.Module):
    """Class 0 scores the image's left pixel, class 1 a constant 2: a mirror changes the answer."""

    def forward(self, x):
        return torch.stack([x[:, 0, 0, 0], torch.full_like(x[:, 0, 0, 0], 2.0)], dim=1)


def test_flip_tta_averages_each_image_with_its_mirror_image():
    # uint8 images; mean 0 and std 1/255 leave the pixel values as they are after normalisation
    model = ModelFile(Path("m.pt"), "pytorch", "toy", ["a", "b"], (1, 1, 2), [0.0], [1 / 255], 0, _LeftPixelOrTwo())
    x = np.array([[[[3, 0]]], [[[3, 3]]], [[[0, 3]]]], dtype=np.uint8)  # (N, C, H, W), W = 2
    labels = np.array([0, 0, 0])
    logits = model.logits(x)
    assert (logits.argmax(1) == labels).tolist() == [True, True, False]
    # mirrored left pixels 0, 3, 3: sums (3, 4), (6, 4), (3, 4) -> only the symmetric image stays right
    assert flip_tta_accuracy(model, x, logits, labels, batch_size=2) == pytest.approx(1 / 3, abs=1e-6)
