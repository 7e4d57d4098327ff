"""``none``: cross-entropy alone (teacher training, and the no-distillation baseline)."""

from kdpipe.methods.common.base import Method, register_method


@register_method("none")
class CrossEntropyOnly(Method):
    needs_teacher = False

    def forward(self, batch):
        x, y = batch.images, batch.labels
        logits = self.student(x)
        loss = self.cross_entropy(logits, y)
        return logits, loss, {"ce": loss.detach()}
