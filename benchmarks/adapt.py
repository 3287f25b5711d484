"""Adapting to a new configuration vs fine-tuning one for it, on SmolLM2-135M (not a test).

Side by side in one run, for budgets no configuration was trained on:

- adapter: the ILP configuration for the budget (from the cached cost table), the
  configuration-aware model's r x r matrices for all 210 matrices, the fold B' = B (I + sU)
  and a standard PEFT adapter written to disk: what ``coalora adapt`` does after loading;
- +quantize: the same plus switching the in-memory base weights to that configuration;
- fine-tune: one per-configuration LoRA (QLoRA) for the same step budget on the same engine,
  measured as seconds per step over ``--measure-steps`` real steps times ``--step-budget``.

Prints the ratio adapter / fine-tune (target <= 1e-3) and the mapper's cost per configuration.

    HF_HUB_OFFLINE=1 python benchmarks/adapt.py [--step-budget 1000] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from coalora.budgets import AllocationSpec, costs_for
from coalora.data import load_task, make_batches
from coalora.methods import get_method
from coalora.models import load_model
from coalora.quant import QuantizedBase
from coalora.quant.allocate import allocate
from coalora.train import TrainSettings, train


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--budgets", type=float, nargs="+", default=[2.75, 3.25, 3.75])
    parser.add_argument("--step-budget", type=int, default=1000, help="steps of one fine-tune")
    parser.add_argument("--measure-steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-elements", type=int, default=65536, help="cost-table sampling")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    settings = TrainSettings(
        steps=args.measure_steps, batch_size=4, max_length=128, r=16, alpha=16, lr=1e-4
    )
    task = load_task("bible-lm", max_train=200)
    loaded = load_model(args.model)
    qbase = QuantizedBase(loaded.model)
    print(f"{args.model}: {len(qbase.targets)} quantized matrices, {args.threads} thread(s)")
    tick = time.perf_counter()
    costs = costs_for(loaded, qbase, AllocationSpec(max_elements=args.max_elements))
    print(f"cost table ready in {time.perf_counter() - tick:.1f} s (cached after the first run)")
    seen = [allocate(qbase.targets, costs, b, model=args.model) for b in (2.5, 3.0, 3.5)]
    coa = get_method("coalora")(loaded, qbase, settings, seen)
    batches = make_batches(task, loaded.tokenizer, "train", 4, 128, seed=0)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for budget in args.budgets:

            def adapter(budget=budget):
                mqc = allocate(qbase.targets, costs, budget, model=args.model)
                with torch.no_grad():
                    coa.coa.set_config(mqc)
                    coa.export(mqc, Path(tmp) / f"b{budget}", args.model)
                return mqc

            mqc = adapter()
            t_adapter = median_time(adapter, args.repeats)
            t_quant = median_time(lambda mqc=mqc: qbase.apply(mqc), 1)
            with torch.no_grad():
                t_mapper = median_time(
                    lambda mqc=mqc: coa.mapper.mixing_for(mqc, qbase.targets), args.repeats
                )
            rows.append((budget, mqc.avg_bits, t_adapter, t_quant, t_mapper))

    # One per-configuration fine-tune, on the same engine, for the same settings.
    loaded = load_model(args.model)
    qbase = QuantizedBase(loaded.model)
    [target_cfg] = [allocate(qbase.targets, costs, args.budgets[0], model=args.model)]
    qlora = get_method("qlora")(loaded, qbase, settings, [target_cfg])
    result = train(qlora, batches.batch, settings, progress=False)
    per_step = result.seconds / result.steps
    fine_tune = per_step * args.step_budget
    print(
        f"fine-tune (QLoRA, batch 4 x 128 tokens, r 16): {per_step:.2f} s/step measured over "
        f"{result.steps} steps -> {fine_tune:.0f} s for {args.step_budget} steps"
    )
    print()
    header = f"{'budget':>6} {'avg_bits':>8} {'adapter':>9} {'+quantize':>10} {'mapper':>8} {'adapter/fine-tune':>18} {'target':>7}"
    print(header)
    print("-" * len(header))
    for budget, bits, t_adapter, t_quant, t_mapper in rows:
        ratio = t_adapter / fine_tune
        print(
            f"{budget:>6.2f} {bits:>8.3f} {t_adapter:>8.3f}s {t_adapter + t_quant:>9.2f}s "
            f"{t_mapper * 1e3:>6.1f}ms {ratio:>18.2e} {'<=1e-3':>7} {'pass' if ratio <= 1e-3 else 'FAIL'}"
        )
    print(
        "\nadapter = ILP + mapper + fold + PEFT files on disk; +quantize adds switching the "
        "base weights; mapper = the configuration-aware model for all matrices (no grad)."
    )


if __name__ == "__main__":
    main()
