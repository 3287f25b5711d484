"""QLoRA: per configuration, the paper's NF quantizer under that configuration and a plain
LoRA (B = 0 at init) fine-tuned on top: one training run per configuration."""

from coalora.methods import Method, register_method


@register_method
class QLoRA(Method):
    name = "qlora"
    per_config = True
