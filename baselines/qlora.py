"""QLoRA: per configuration, the paper's NF quantizer under that configuration and a plain
LoRA (B = 0 at init) fine-tuned on top: one training run per configuration.

Everything is the base ``Method``: ``QuantizedBase.apply`` writes the configuration's
dequantized weights into the model, LoRA is ``coalora.lora``. For the library path with
bitsandbytes' real 4-bit layers see ``qlora_bnb``.
"""

from coalora.methods import Method, Serves


class QLoRA(Method):
    name = "qlora"
    serves = Serves.TRAINED_CONFIGURATION
