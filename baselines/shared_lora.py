"""Shared-LoRA: ONE plain LoRA trained across several configurations, with no configuration
awareness. Default budgets as the official scripts: 2.5/3.0/3.5/4.0 (ILP configurations).

What makes it "shared", all from the base ``Method`` and the shared engine: one set of LoRA
factors (and task head) wrapped around the quantized base once; one AdamW state over those
parameters for the whole run (the official code kept one Adam state per configuration, a
defect, docs/method.md section 9); each step draws K of the configurations, averages their losses
on the same minibatch and steps once. Every configuration is evaluated with the same adapter.
"""

from coalora.methods import Method, Serves


class SharedLoRA(Method):
    name = "shared-lora"
    serves = Serves.SHARED_ADAPTER
    default_budgets = (2.5, 3.0, 3.5, 4.0)
