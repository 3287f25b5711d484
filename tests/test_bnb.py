"""bitsandbytes stays importable after ``import coalora`` but is loaded only where it is
used (coalora/bnb.py); its kernel-hub warning is dropped in every process that imports
coalora. The checks read ``sys.modules`` and logging records, so they mean the same on a CPU
with or without AVX512-BF16 (only there does bitsandbytes print the warning at import)."""

import inspect
import logging
import subprocess
import sys
from pathlib import Path

from coalora.bnb import KERNEL_LOGGER, KERNEL_WARNING, import_bitsandbytes

REPO = Path(__file__).resolve().parents[1]

# Every module of the harness and the baselines, the fork server's start-up (which imports
# peft), and an adapter written as `coalora adapt` / `coalora export` write it.
IMPORT_THE_HARNESS = """
import importlib, pkgutil, sys
import baselines, coalora
from coalora import forkserver

forkserver.preload()
for package in (coalora, baselines):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
import peft
assert "peft.helpers" in sys.modules
sys.path.insert(0, "tests")
import tempfile, tiny_models
from coalora.export import export_peft_adapter
from coalora.lora import inject_lora
from coalora.quant import quantizable_targets
model = tiny_models.tiny_llama()
targets = quantizable_targets(model)
with tempfile.TemporaryDirectory() as tmp:
    export_peft_adapter(model, inject_lora(model, targets, r=2, alpha=4), None, None, targets,
                        tmp + "/a", "tiny", "CAUSAL_LM", method="lora")
print(sorted(m for m in sys.modules if m.split(".")[0] == "bitsandbytes" and sys.modules[m]))
"""

# A notebook that uses coalora and bitsandbytes: after `import coalora` (and after coalora
# imported peft), bitsandbytes imports, and peft sees it as in a process without coalora.
BOTH_IN_ONE_PROCESS = """
import coalora
from coalora.bnb import import_peft
import_peft()
import bitsandbytes.functional
import peft.import_utils, transformers.utils.import_utils
assert peft.import_utils.is_bnb_available() and peft.import_utils.is_bnb_4bit_available()
assert transformers.utils.import_utils.is_bitsandbytes_available()
print(bitsandbytes.functional.quantize_4bit.__name__)
"""

# QLoRA-bnb's path in a process where peft was imported without bitsandbytes (as in a fork
# server's child): its 4-bit layers get peft's 4-bit LoRA layers, and no kernel warning.
QLORA_BNB = """
import logging, sys
import torch
from coalora.bnb import import_peft
import_peft()
from peft import LoraConfig, get_peft_model
from baselines.qlora_bnb import load_bnb_model
from coalora.quant import quantizable_targets
sys.path.insert(0, "tests")
import tiny_models

logging.basicConfig(level=logging.INFO)  # as the command line: every warning on stderr
assert "bitsandbytes" not in sys.modules and sys.modules["peft.helpers"].bnb is None
model = tiny_models.tiny_llama()
names = [t.name for t in quantizable_targets(model)]
lora = get_peft_model(load_bnb_model(model, quantizable_targets(model)), LoraConfig(target_modules=names))
from peft.tuners.lora.bnb import Linear4bit
assert sys.modules["peft.helpers"].bnb is sys.modules["bitsandbytes"]
print(len(names), sum(isinstance(m, Linear4bit) for m in lora.modules()))
"""

# The filter is in place from `import coalora` on, before bitsandbytes is imported: a record
# as bitsandbytes makes it (constructed: this test's CPU may never emit it) is dropped, any
# other record of that logger is printed.
KERNEL_WARNING_RECORD = f"""
import logging, sys
import coalora
assert "bitsandbytes" not in sys.modules
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
logger = logging.getLogger({KERNEL_LOGGER!r})
for message in ({KERNEL_WARNING + ": %s. Please make sure ..."!r}, "another warning: %s"):
    logger.handle(logger.makeRecord(
        logger.name, logging.WARNING, "ops.py", 252, message, (ImportError("kernels"),), None
    ))
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def test_the_harness_the_fork_server_and_an_adapter_export_import_no_bitsandbytes():
    proc = run_python(IMPORT_THE_HARNESS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"
    assert KERNEL_WARNING not in proc.stderr


def test_bitsandbytes_imports_after_coalora_in_the_same_process():
    proc = run_python(BOTH_IN_ONE_PROCESS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "quantize_4bit"


def test_qlora_bnb_imports_bitsandbytes_for_peft_without_the_kernel_warning():
    proc = run_python(QLORA_BNB)
    assert proc.returncode == 0, proc.stderr[-3000:]
    targets, lora_4bit = proc.stdout.split()
    assert int(targets) > 0 and lora_4bit == targets
    assert KERNEL_WARNING not in proc.stderr and "kernels" not in proc.stderr


def test_import_coalora_drops_the_kernel_warning_before_bitsandbytes_is_imported():
    proc = run_python(KERNEL_WARNING_RECORD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [f"{KERNEL_LOGGER}: another warning: kernels"]


def test_exactly_bitsandbytes_kernel_warning_is_dropped(caplog):
    bnb = import_bitsandbytes()
    # The warning as bitsandbytes emits it (its source, so that a new wording fails here).
    source = inspect.getsource(bnb.backends.cpu.ops)
    assert bnb.backends.cpu.ops.__name__ == KERNEL_LOGGER
    assert "logger = logging.getLogger(__name__)" in source
    assert f'"{KERNEL_WARNING}: %s.' in source
    logger = logging.getLogger(KERNEL_LOGGER)
    with caplog.at_level(logging.WARNING, logger=KERNEL_LOGGER):
        logger.warning(f"{KERNEL_WARNING}: %s. Please ...", ModuleNotFoundError("kernels"))
        logger.warning("another warning of bitsandbytes' CPU backend")
    assert [r.getMessage() for r in caplog.records] == [
        "another warning of bitsandbytes' CPU backend"
    ]
