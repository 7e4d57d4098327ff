"""``kd``: Hinton et al. (2015) soft targets.

loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)
``alpha`` weights the distillation term; T^2 keeps its gradients on the scale of the CE term.
With ``distill.logit_standardize`` both logits are z-scored per sample inside the KL term
(Sun et al., 2024; ``common.losses.standardize``); the CE term keeps the raw logits.
"""

from kdpipe.methods.common.base import Method, register_method
from kdpipe.methods.common.losses import kd_divergence, kd_loss

__all__ = ["HintonKD", "kd_divergence", "kd_loss"]


@register_method("kd")
class HintonKD(Method):
    logits_only = True
    standardizes_logits = True

    def forward(self, batch):
        x, y = batch.images, batch.labels
        teacher = self.teacher.logits(batch)
        logits = self.student(x)
        loss, kd, ce = kd_loss(
            logits, teacher, y, self.cfg.temperature, self.cfg.alpha, self.label_smoothing, self.standardize
        )
        return logits, loss, {"kd": kd.detach(), "ce": ce.detach()}
