"""Per-configuration set-up vs evaluation time on SmolLM2-135M (not a test).

One process, as ``coalora evaluate --qconfigs`` runs it: a CoA-LoRA checkpoint of SmolLM2-135M
(trained for one step, so that the adapter and the configuration-aware model are real) is
loaded once, then each configuration is switched in (set-up: quantize the base weights under
the configuration + compute its adapter, ``method.prepare_eval``) and evaluated (GPTQ-style
perplexity on the held-out Bible books + the embedded lm-eval tasks ``bible_ppl`` and
``bible_mc``). Printed per configuration: set-up seconds, evaluation seconds, their ratio
(target <= 0.1).

To stay within about five minutes the evaluation is limited (``--limit``: perplexity windows
and lm-eval documents per task). A limited evaluation is shorter than the real one, so the
verdict on the measured ratio is conservative; the ratio is also projected to the full test
sets from the measured time per window / document of each part (each part's time grows
linearly with its count, plus a fixed overhead the projection over-counts).

The configurations: uniform NF4 and NF3 (QLoRA-like double quantization), and a mixed one
(per-matrix bits 2/3/4 drawn with a fixed seed, block size 32 so that none of its matrices is
already in the dequantized-weight cache). SmolLM2's weights were Q4_1 (GGUF) before we quantize
them. Timings share the CPU with whatever else runs on the machine; by default torch uses ONE
thread, because on a busy 2-core machine two threads per process oversubscribe the cores and
ran up to 8x slower here (``--threads 2`` to use both).

Usage::

    python benchmarks/evaluate.py [--limit 3] [--threads 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TARGET_RATIO = 0.1
MODEL = "smollm2-135m"
TASK = "bible-lm"


def make_configs(targets, directory: Path) -> list[Path]:
    import numpy as np

    from coalora.quant import ModelQConfig, QuantConfig

    rng = np.random.default_rng(0)
    configs = [
        ModelQConfig.uniform(targets, QuantConfig(4, 8, "fp32", 64, 256), name="uniform-nf4"),
        ModelQConfig.uniform(targets, QuantConfig(3, 8, "fp32", 64, 256), name="uniform-nf3"),
        ModelQConfig.from_list(
            targets,
            # Block size 32: options the uniform ones did not already put in the cache.
            [QuantConfig(int(b), 8, "fp32", 32, 256) for b in rng.choice([2, 3, 4], len(targets))],
            name="mixed-2-3-4",
        ),
    ]
    paths = []
    for mqc in configs:
        mqc.model = MODEL
        paths.append(directory / f"{mqc.name}.json")
        mqc.save(paths[-1])
    return paths


def train_checkpoint(qconfig: Path, out: Path) -> Path:
    from coalora.runner import run_training
    from coalora.train import TrainSettings

    settings = TrainSettings(steps=1, batch_size=1, max_length=64, r=16, configs_per_step=1)
    return run_training(
        model=MODEL,
        task=TASK,
        method="coalora",
        settings=settings,
        out=out,
        qconfig=str(qconfig),
        max_train=8,
        progress=False,
    )


def projected_eval_seconds(record: dict) -> float:
    """Evaluation time scaled from the limited counts to the full test sets, part by part."""
    protocol = record["protocol"]
    ppl = protocol["perplexity"]
    full_windows = ppl["total_tokens"] // ppl["window"]
    seconds = ppl["seconds"] * full_windows / ppl["num_windows"]
    for info in protocol["lm_eval"]["tasks"].values():
        samples = info["n_samples"]
        seconds += info["seconds"] * samples["original"] / samples["effective"]
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=3, help="windows / documents per part")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--keep", type=Path, default=None, help="keep results in this directory")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from coalora.evaluate import EvalSettings, Trained, evaluate_configs
    from coalora.models import load_model
    from coalora.quant import quantizable_targets

    work = Path(args.keep or tempfile.mkdtemp(prefix="coalora-bench-eval-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    targets = quantizable_targets(load_model(MODEL).model)
    qconfigs = make_configs(targets, work)
    checkpoint = train_checkpoint(qconfigs[0], work / "checkpoint")
    prepared = time.perf_counter() - started
    print(f"{MODEL}: {len(targets)} matrices; checkpoint (1 step) ready in {prepared:.0f} s")

    settings = EvalSettings(limit=args.limit, batch_size=8)
    outs = [work / "results" / p.name for p in qconfigs]
    records = evaluate_configs(Trained(checkpoint), qconfigs, None, outs, settings)

    first = records[0]["protocol"]
    ppl, lm_eval = first["perplexity"], first["lm_eval"]
    print(
        f"one-time load (checkpoint + tasks): {first['load_seconds']:.1f} s; threads "
        f"{first['threads']}; limit {args.limit}: perplexity {ppl['num_windows']} x {ppl['window']}"
        f"-token windows (of {ppl['total_tokens'] // ppl['window']}), lm-eval "
        + ", ".join(
            f"{t} {i['n_samples']['effective']} docs (of {i['n_samples']['original']})"
            for t, i in lm_eval["tasks"].items()
        )
    )
    header = (
        f"{'configuration':<14} {'bits':>6} {'set-up':>8} {'eval':>8} {'ratio':>6} "
        f"{'full eval*':>10} {'ratio*':>7} {'target':>6}  result"
    )
    print(header)
    print("-" * len(header))
    worst = 0.0
    for record in records:
        setup, evaluation = record["setup_seconds"], record["eval_seconds"]
        projected = projected_eval_seconds(record)
        ratio, ratio_full = setup / evaluation, setup / projected
        worst = max(worst, ratio)
        verdict = "pass" if ratio <= TARGET_RATIO else "FAIL"
        print(
            f"{record['config_name']:<14} {record['avg_bits']:6.3f} {setup:7.2f}s {evaluation:7.1f}s "
            f"{ratio:6.3f} {projected:9.0f}s {ratio_full:7.3f} {TARGET_RATIO:6.2f}  {verdict}"
        )
    print(
        "* projected to the full test sets from the measured per-window / per-document times "
        "(information); the verdict uses the measured ratio of the limited run (conservative)."
    )
    print(f"total {time.perf_counter() - started:.0f} s; results in {work / 'results'}")
    return 0 if worst <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
