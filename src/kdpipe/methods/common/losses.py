"""Losses shared by several methods: Hinton's soft-target divergence, the KD loss, and logit
standardisation (the z-score transform of Sun et al., 2024)."""

import torch
import torch.nn.functional as F


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    # autocast hands over bf16/fp16 logits; softmax at high T needs fp32 to stay accurate
    return x.to(torch.promote_types(x.dtype, torch.float32))


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score each sample's logits over the classes: ``(z - mean) / (std + eps)``, in fp32 or wider.

    Logit standardisation (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR
    2024): the softmax then depends on the logits' shape only, not on their mean or scale, so the
    student need not match the teacher's logit range. ``std`` is the unbiased sample standard
    deviation and ``eps`` is added to it, as in the authors' code
    (github.com/sunshangquan/logit-standardization-KD, ``normalize`` in
    ``mdistiller/distillers/KD.py``). Methods apply it to both logits inside the distillation term
    only; the cross-entropy keeps the raw logits (``distill.logit_standardize``).
    """
    z = _at_least_fp32(logits)
    return (z - z.mean(dim=-1, keepdim=True)) / (z.std(dim=-1, keepdim=True) + eps)


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch, in fp32 or wider."""
    t = temperature
    log_p_student = F.log_softmax(_at_least_fp32(student_logits) / t, dim=1)
    log_p_teacher = F.log_softmax(_at_least_fp32(teacher_logits) / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * (t * t)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
    standardize_logits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (total, kd term, ce term). With ``standardize_logits`` the KD term compares the
    z-scored logits (``standardize``); the CE term always sees the raw ones."""
    if standardize_logits:
        kd = kd_divergence(standardize(student_logits), standardize(teacher_logits), temperature)
    else:
        kd = kd_divergence(student_logits, teacher_logits, temperature)
    ce = F.cross_entropy(_at_least_fp32(student_logits), labels, label_smoothing=label_smoothing)
    return alpha * kd + (1.0 - alpha) * ce, kd, ce
