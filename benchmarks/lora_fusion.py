"""The LoRA update accumulated in the base GEMM against the separate ops (not a test).

``LoraLinear`` adds ``scaling * B (I + M) A x`` to the base layer's output inside one GEMM
(``torch.addmm``; in place without autograd) when the scaling is a power of two, instead of
a product, a scaling pass and a sum pass over the [tokens, out_features] output
(``LoraLinear._add_update``). This script times both paths side by side in one process, on a
CoA-LoRA model with the settings of an experiment of ``config/overnight.yaml``:

- evaluation: forward passes without autograd over the same batches;
- training: optimizer steps of the shared engine (``coalora.train.train``, search off, K
  configurations per step), from the same state each time (fused and unfused steps of a
  round start from one saved state);

in alternating rounds (ABBA), and prints the medians, their ratio (fused / unfused) and the
ratio of each round pair. It also checks that both paths give bit-identical logits and
trained weights (the speed path must change no number).

    python benchmarks/lora_fusion.py                      # MiniLM-L6, 6 rounds
    python benchmarks/lora_fusion.py --model tiny-bert --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Run as a script, this file's directory comes first on sys.path: look in the repository.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from benchmarks.step_cost import preset  # noqa: E402
from coalora.budgets import AllocationSpec  # noqa: E402
from coalora.data import load_task, make_batches  # noqa: E402
from coalora.lora import LoraLinear  # noqa: E402
from coalora.methods import get_method  # noqa: E402
from coalora.models import MODELS, load_model  # noqa: E402
from coalora.quant import QuantizedBase  # noqa: E402
from coalora.runner import model_kind, training_configs  # noqa: E402
from coalora.train import TrainSettings, train  # noqa: E402


@contextlib.contextmanager
def unfused():
    """Every LoraLinear takes its separate-ops path (the one non-power-of-two scalings take)."""
    own = LoraLinear.__dict__["_fuses_update"]
    LoraLinear._fuses_update = property(lambda self: False)
    try:
        yield
    finally:
        LoraLinear._fuses_update = own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6", help="a name of `coalora models`")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=2, help="training steps per round")
    parser.add_argument("--eval-batches", type=int, default=4, help="forward passes per round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the rules': 1)")
    args = parser.parse_args()
    if args.model not in MODELS:
        parser.error(f"--model: one of {', '.join(MODELS)}")
    for name in ("rounds", "steps", "eval_batches", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    torch.set_num_threads(args.threads)
    transformers_logging.disable_progress_bar()
    started = time.perf_counter()

    encoder = MODELS[args.model].family == "encoder"
    exp_name, exp = preset(args.model, None)
    settings = TrainSettings.from_dict(
        {**exp["train"], "configs_per_step": 2, "epoch_steps": 0, "steps": args.steps}
    )
    task = load_task("bible-testament" if encoder else "bible-lm", max_train=400)
    loaded = load_model(
        args.model, kind=model_kind(task.spec.kind), num_labels=task.spec.num_labels, seed=0
    )
    qbase = QuantizedBase(loaded.model)
    cls = get_method("coalora")
    spec = AllocationSpec(quantizer=exp["quantizer"], max_elements=65536, seed=0)
    configs = training_configs(cls, loaded, qbase, allocation=spec, budgets=exp["budgets"])
    method = cls(loaded, qbase, settings, configs)
    adapters = [m for m in loaded.model.modules() if isinstance(m, LoraLinear)]
    fused = sum(m._fuses_update for m in adapters)
    batches = make_batches(
        task, loaded.tokenizer, "train", settings.batch_size, settings.max_length
    )
    eval_batches = [
        {k: v for k, v in batches.batch(k).items() if k != "labels"}
        for k in range(args.eval_batches)
    ]
    for mqc in configs:  # every configuration in the dequantization cache first
        qbase.apply(mqc)
    train(method, batches.batch, dataclasses.replace(settings, steps=1, seed=10**6), progress=False)

    def evaluate() -> list[torch.Tensor]:
        method.activate(configs[0])
        loaded.model.eval()
        with torch.no_grad():
            return [loaded.model(**batch).logits for batch in eval_batches]

    times = {path: {"eval": [], "train": []} for path in ("fused", "unfused")}
    identical = True
    for rnd in range(args.rounds):
        state = copy.deepcopy(method.trainable_state())
        order = ("fused", "unfused") if rnd % 2 == 0 else ("unfused", "fused")
        outputs = {}
        for path in order:
            with unfused() if path == "unfused" else contextlib.nullcontext():
                assert adapters[0]._fuses_update == (path == "fused" and fused > 0)
                method.load_trainable_state(copy.deepcopy(state))
                tick = time.perf_counter()
                logits = evaluate()
                times[path]["eval"].append(time.perf_counter() - tick)
                tick = time.perf_counter()
                train(
                    method, batches.batch, dataclasses.replace(settings, seed=rnd), progress=False
                )
                times[path]["train"].append(time.perf_counter() - tick)
                outputs[path] = (logits, copy.deepcopy(method.trainable_state()))
        (la, sa), (lb, sb) = outputs["fused"], outputs["unfused"]
        identical &= all(torch.equal(a, b) for a, b in zip(la, lb, strict=True))
        identical &= all(torch.equal(sa[k], sb[k]) for k in sa)

    print(f"LoRA fusion: one GEMM vs separate ops, {datetime.datetime.now():%Y-%m-%d %H:%M:%S}")
    print(
        f"model {args.model}, settings of experiment {exp_name} (r={settings.r}, "
        f"alpha={settings.alpha:g}: scaling {settings.alpha / settings.r:g}); {fused} of "
        f"{len(adapters)} adapters fuse; torch threads {torch.get_num_threads()} (CPUs "
        f"{os.cpu_count()}, load average {os.getloadavg()[0]:.2f}); {args.rounds} rounds"
    )
    print(
        f"per round: eval = {args.eval_batches} forward passes without autograd, batch "
        f"{settings.batch_size} x {settings.max_length}; train = {args.steps} CoA-LoRA steps, K=2"
    )
    header = f"{'part':<8} {'fused s':>9} {'unfused s':>10} {'fused/unfused':>14}  round pairs"
    print()
    print(header)
    print("-" * len(header))
    for part in ("eval", "train"):
        a, b = (statistics.median(times[p][part]) for p in ("fused", "unfused"))
        pairs = " ".join(
            f"{x / y:.2f}"
            for x, y in zip(times["fused"][part], times["unfused"][part], strict=True)
        )
        print(f"{part:<8} {a:>9.3f} {b:>10.3f} {a / b:>14.3f}  {pairs}")
    print(
        f"\nlogits and trained weights bit-identical on both paths: {'yes' if identical else 'NO'}"
    )
    print(f"wall time {time.perf_counter() - started:.0f} s")
    if not identical:
        sys.exit("lora_fusion.py: the fused path changed a number")


if __name__ == "__main__":
    main()
