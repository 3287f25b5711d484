"""LoRA at full precision: plain LoRA (B = 0 at init) fine-tuned on the unquantized base, one
run per seed. The ceiling of the quantized methods: what the same adapter, steps and batches
reach when nothing is quantized (no configuration, 32-bit weights).

Everything is ``common.FullPrecisionMethod`` (no quantization, one full-precision pass per
step) with the base ``Method``'s LoRA; its export is a standard peft adapter over the
unquantized base (no ``qconfig.json``), loaded by peft alone.
"""

from .common import FullPrecisionMethod


class FullPrecisionLoRA(FullPrecisionMethod):
    name = "lora-fp"
