"""``kd``: Hinton et al. (2015) soft targets.

loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)
``alpha`` weights the distillation term; T^2 keeps its gradients on the scale of the CE term.
"""

from kdpipe.methods.common.base import Method, register_method
from kdpipe.methods.common.losses import kd_divergence, kd_loss

__all__ = ["HintonKD", "kd_divergence", "kd_loss"]


@register_method("kd")
class HintonKD(Method):
    logits_only = True

    def forward(self, batch):
        x, y = batch.images, batch.labels
        teacher = self.teacher.logits(batch)
        logits = self.student(x)
        loss, kd, ce = kd_loss(logits, teacher, y, self.cfg.temperature, self.cfg.alpha, self.label_smoothing)
        return logits, loss, {"kd": kd.detach(), "ce": ce.detach()}
