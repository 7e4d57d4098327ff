"""Losses shared by several methods: Hinton's soft-target divergence and the KD loss."""

import torch
import torch.nn.functional as F


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    # autocast hands over bf16/fp16 logits; softmax at high T needs fp32 to stay accurate
    return x.to(torch.promote_types(x.dtype, torch.float32))


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (total, kd term, ce term)."""
    kd = kd_divergence(student_logits, teacher_logits, temperature)
    ce = F.cross_entropy(_at_least_fp32(student_logits), labels, label_smoothing=label_smoothing)
    return alpha * kd + (1.0 - alpha) * ce, kd, ce
