"""Shared-LoRA: ONE plain LoRA trained across several configurations (one optimizer state),
with no configuration awareness. Default budgets as the official scripts: 2.5/3.0/3.5/4.0."""

from coalora.methods import Method, register_method


@register_method
class SharedLoRA(Method):
    name = "shared-lora"
    default_budgets = (2.5, 3.0, 3.5, 4.0)
