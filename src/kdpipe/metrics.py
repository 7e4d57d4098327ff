"""Classification metrics of logits against labels, from scikit-learn and torchmetrics.

Everything here is a library call; this module only decides names, rounding, and what to do
when a split lacks some classes (AUC is then computed over the classes present).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    brier_score_loss,
    classification_report,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)
from torchmetrics.functional.classification import multiclass_calibration_error

AVERAGES = ("micro", "macro", "weighted")


def probabilities(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()


def _r(value: float) -> float:
    return round(float(value), 6)


def topk_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    """scikit-learn's top-k accuracy; k >= the class count is 1 by definition (sklearn refuses
    2-D scores for two classes, and warns for k >= classes)."""
    if k >= probs.shape[1]:
        return 1.0
    if probs.shape[1] == 2:  # k == 1
        return _r((probs.argmax(1) == labels).mean())
    return _r(top_k_accuracy_score(labels, probs, k=k, labels=list(range(probs.shape[1]))))


def auc_scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """One-vs-rest ROC-AUC; over the classes present when the split lacks some (None if < 2)."""
    present = np.unique(labels)
    if len(present) < 2:
        return {f"auc_{avg}": None for avg in AVERAGES}
    if len(present) < probs.shape[1]:
        probs = probs[:, present]
        probs = probs / probs.sum(1, keepdims=True)
    if len(present) == 2:  # binary: the score of the second class
        value = _r(roc_auc_score(labels == present[1], probs[:, 1]))
        return {f"auc_{avg}": value for avg in AVERAGES}
    return {
        f"auc_{avg}": _r(roc_auc_score(labels, probs, multi_class="ovr", average=avg, labels=present))
        for avg in AVERAGES
    }


def classification_metrics(
    logits: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    topk: int = 3,
    ece_bins: int = 15,
    teacher_logits: np.ndarray | None = None,
) -> dict[str, float | None]:
    probs = probabilities(logits)
    pred = probs.argmax(1)
    classes = list(range(num_classes))
    k = min(topk, num_classes)
    out: dict[str, float | None] = {
        "accuracy": _r((pred == labels).mean()),
        f"top{k}_accuracy": topk_accuracy(labels, probs, k),
    }
    for avg in AVERAGES:
        p, r, f, _ = precision_recall_fscore_support(labels, pred, average=avg, labels=classes, zero_division=0)
        out.update({f"precision_{avg}": _r(p), f"recall_{avg}": _r(r), f"f1_{avg}": _r(f)})
    out.update(auc_scores(labels, probs))
    out["nll"] = _r(log_loss(labels, probs, labels=classes))
    out["brier"] = _r(brier_score_loss(labels, probs, labels=classes))
    out["ece"] = _r(
        multiclass_calibration_error(
            torch.from_numpy(probs).float(), torch.from_numpy(labels), num_classes=num_classes, n_bins=ece_bins, norm="l1"
        )
    )
    if teacher_logits is not None:
        out.update(teacher_agreement(logits, teacher_logits))
    return out


def teacher_agreement(logits: np.ndarray, teacher_logits: np.ndarray) -> dict[str, float]:
    """Top-1 agreement with the teacher and the mean KL(teacher || model) per image."""
    s, t = torch.from_numpy(logits).double(), torch.from_numpy(teacher_logits).double()
    kl = torch.nn.functional.kl_div(s.log_softmax(1), t.log_softmax(1), log_target=True, reduction="batchmean")
    return {
        "teacher_agreement": _r((s.argmax(1) == t.argmax(1)).double().mean()),
        "teacher_kl": _r(kl),
    }


def per_class_accuracy(labels: np.ndarray, pred: np.ndarray, class_names: list[str]) -> dict[str, float | None]:
    """Recall of each class (the share of its images predicted right); None for an absent class."""
    cm = confusion_matrix(labels, pred, labels=list(range(len(class_names))))
    totals = cm.sum(1)
    return {name: (_r(cm[i, i] / totals[i]) if totals[i] else None) for i, name in enumerate(class_names)}


def report(labels: np.ndarray, pred: np.ndarray, class_names: list[str]) -> dict:
    """scikit-learn's classification report and the confusion matrix (rows: true class)."""
    classes = list(range(len(class_names)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = classification_report(labels, pred, labels=classes, target_names=class_names, output_dict=True,
                                     zero_division=0)
    return {
        "classification_report": text,
        "confusion_matrix": confusion_matrix(labels, pred, labels=classes).tolist(),
        "class_names": class_names,
    }


def reliability(labels: np.ndarray, logits: np.ndarray, bins: int) -> list[dict[str, float]]:
    """Top-label reliability diagram: per confidence bin, mean confidence and accuracy."""
    probs = probabilities(logits)
    confidence, correct = probs.max(1), (probs.argmax(1) == labels).astype(int)
    if correct.min() == correct.max():  # calibration_curve needs both outcomes
        return [{"confidence": _r(confidence.mean()), "accuracy": _r(correct.mean())}]
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=bins, strategy="uniform")
    return [{"confidence": _r(c), "accuracy": _r(a)} for c, a in zip(mean_confidence, accuracy)]


def topk_curve(labels: np.ndarray, logits: np.ndarray, max_k: int) -> list[dict[str, float]]:
    probs = probabilities(logits)
    return [{"k": k, "accuracy": topk_accuracy(labels, probs, k)} for k in range(1, min(max_k, probs.shape[1]) + 1)]
