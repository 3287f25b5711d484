"""Per-configuration fine-tuning cost of every baseline on one model, side by side.

Each method is built on a freshly loaded model and trained by the shared engine
(``coalora.train.train``) for the same steps, batches and seed. Reported per method:

* ``build s``: constructing the method (bitsandbytes reload for qlora-bnb, GPTQ for gptq-lora);
* ``init s``: the low-rank initialisation of lqlora / loftq (run before the engine's timer);
* ``train s``: the engine's fine-tuning seconds (what the manifest records as train_seconds),
  which include quantizing the configuration on its first activation;
* ``s/step`` = train s / steps, and the first and last step's loss.

Per-configuration methods train under one uniform configuration ``(b, 8, fp32, 64, 256)``
(default b = 4, which is also the one configuration qlora-bnb accepts); shared-lora trains
under four uniform ones (b = 2, 3, 4, 8; K = 2 per step, so two forward/backward passes per
step); full-ft ignores configurations. Uniform configurations keep the ILP (and its cost
table) out of the measurement.

    python benchmarks/finetune_seconds.py                       # SmolLM2-135M, 5 steps, 2 x 64 tokens
    python benchmarks/finetune_seconds.py --methods qlora,lqlora --steps 3 --threads 1

The SmolLM2 weights were Q4_1 (GGUF) before we quantize them. Timings depend on the CPU's
load: report it with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Run as a script, this file's directory comes first on sys.path, and this file's name would
# hide the ``baselines`` package that registers the methods: look in the repository instead.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from coalora.data import load_task, make_batches  # noqa: E402
from coalora.methods import get_method, registered_methods  # noqa: E402
from coalora.models import load_model  # noqa: E402
from coalora.quant import ModelQConfig, QuantConfig, QuantizedBase  # noqa: E402
from coalora.train import TrainSettings, train  # noqa: E402


def run_one(method: str, args, task) -> dict:
    settings = TrainSettings(
        steps=args.steps, batch_size=args.batch_size, max_length=args.max_length, r=args.rank,
        lr=1e-4, seed=0, configs_per_step=2,
    )  # fmt: skip
    loaded = load_model(args.model, seed=settings.seed)
    qbase = QuantizedBase(loaded.model)
    if method == "shared-lora":
        configs = [
            ModelQConfig.uniform(qbase.targets, QuantConfig(b, 8, "fp32", 64, 256))
            for b in (2, 3, 4, 8)
        ]
    else:
        configs = [ModelQConfig.uniform(qbase.targets, QuantConfig(args.bits, 8, "fp32", 64, 256))]
    options = {
        "lqlora": {"iters": args.lq_iters},
        "loftq": {"iters": args.loftq_iters},
        "gptq-lora": {"calib_samples": args.calib_samples},
    }.get(method)
    kwargs = {"options": options} if options is not None else {}

    started = time.perf_counter()
    runner = get_method(method)(loaded, qbase, settings, configs, **kwargs)
    build = time.perf_counter() - started
    started = time.perf_counter()
    runner.parameters()  # lqlora / loftq decompose here, before the engine's timer
    init = time.perf_counter() - started
    batches = make_batches(
        task, loaded.tokenizer, "train", settings.batch_size, settings.max_length, seed=0
    )
    result = train(runner, batches.batch, settings, progress=False)
    trainable = sum(p.numel() for p in runner.parameters())
    provenance = runner.train_configs[0].extra.get("baseline", {}) if runner.train_configs else {}
    notes = ""
    if "iterations_run" in provenance:
        runs = provenance["iterations_run"]
        notes = (
            f"iterations mean {runs['mean']:.1f} max {runs['max']}; ||W-Q-L1L2|| "
            f"{provenance['error_first_iteration']:.3f} -> {provenance['error_kept']:.3f}"
        )
    elif "storage_avg_bits" in provenance:
        notes = f"GPTQ storage {provenance['storage_avg_bits']:.3f} bits/weight"
    return {
        "method": method,
        "build_s": build,
        "init_s": init,
        "train_s": result.seconds,
        "s_per_step": result.seconds / result.steps,
        "steps": result.steps,
        "configs": len(runner.train_configs),
        "trainable_params": trainable,
        "loss_first": result.losses[0],
        "loss_last": result.losses[-1],
        "notes": notes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="bible-lm")
    # Every registered baseline (CoA-LoRA's own cost is benchmarks/step_cost.py).
    baselines = [name for name in registered_methods() if name != "coalora"]
    parser.add_argument("--methods", default=",".join(baselines))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--bits", type=int, default=4, choices=(2, 3, 4, 8))
    parser.add_argument("--lq-iters", type=int, default=100, help="LQ-LoRA iterations (early stop)")
    parser.add_argument("--loftq-iters", type=int, default=1)
    parser.add_argument("--calib-samples", type=int, default=32, help="GPTQ calibration rows")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        get_method(m)  # unknown names fail before any work
    task = load_task(args.task, max_train=256)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"model {args.model}, task {args.task}, {args.steps} steps of {args.batch_size} x {args.max_length} "
        f"tokens, r={args.rank}, uniform b={args.bits} configuration, torch threads "
        f"{torch.get_num_threads()}, CPUs {os.cpu_count()}, load average at start {load:.2f}"
    )
    rows = []
    for method in methods:
        try:
            rows.append(run_one(method, args, task))
        except ValueError as err:  # e.g. gptq-lora without llmcompressor
            rows.append({"method": method, "error": str(err)})
        print(f"  done {method}", flush=True)
    header = f"{'method':<12} {'build s':>8} {'init s':>8} {'train s':>8} {'s/step':>7} {'configs':>7} {'trainable':>11} {'loss first->last':>18}"
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['method']:<12} error: {r['error']}")
            continue
        print(
            f"{r['method']:<12} {r['build_s']:>8.1f} {r['init_s']:>8.1f} {r['train_s']:>8.1f} "
            f"{r['s_per_step']:>7.2f} {r['configs']:>7} {r['trainable_params']:>11,} "
            f"{r['loss_first']:>8.4f}->{r['loss_last']:.4f}  {r['notes']}"
        )
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
