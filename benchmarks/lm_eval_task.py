"""Cost and accuracy of one whole embedded lm-eval task on SmolLM2-135M (not a test).

The bare base model (no adapter) is scored by lm-eval on every item of an embedded task
(default ``bible_mc``, ``coalora.evaluate.lm_eval_tasks``) at full precision and under
uniform NF configurations, each as one ``LMEvalSuite.run`` (the call the evaluation driver
makes per configuration). Printed per configuration: items, wall and CPU seconds (the
process's, which on a shared machine say more than the wall clock), acc and acc_norm,
beside the chance level (1 / number of choices). What it answers: how long the task takes
per configuration evaluated, and whether its accuracy separates configurations from chance
and from each other. SmolLM2's weights were Q4_1 (GGUF) before we quantize them.

Torch uses ONE thread by default (a job of the workflow gets one core); the seconds depend
on the machine's load: report it with them.

    HF_HUB_OFFLINE=1 python benchmarks/lm_eval_task.py [--configs fp,nf3] [--limit N] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

MODEL = "smollm2-135m"
# Configuration labels: full precision, or uniform NF-b double quantization (b, 8, fp32, 64, 256).
UNIFORM_BITS = {"nf2": 2, "nf3": 3, "nf4": 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="bible_mc")
    parser.add_argument("--configs", default="fp,nf3", help="comma-separated: fp, nf2, nf3, nf4")
    parser.add_argument("--limit", type=int, default=None, help="items per task (default all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    labels = args.configs.split(",")
    unknown = [c for c in labels if c != "fp" and c not in UNIFORM_BITS]
    if unknown:
        parser.error(
            f"unknown configuration(s) {unknown}: choose from fp, {', '.join(UNIFORM_BITS)}"
        )

    import json

    import torch

    from coalora.evaluate.lm_eval_tasks import LMEvalSuite, embedded_tasks_dir
    from coalora.models import load_model
    from coalora.quant import ModelQConfig, QuantConfig, QuantizedBase

    torch.set_num_threads(args.threads)
    loaded = load_model(MODEL)
    qbase = QuantizedBase(loaded.model)
    suite = LMEvalSuite([args.task], batch_size=args.batch_size)
    suite.prepare()  # task data built and loaded before any clock starts
    with (embedded_tasks_dir() / f"{args.task}.jsonl").open() as handle:
        first = json.loads(handle.readline())
    chance = 1 / len(first["choices"]) if "choices" in first else float("nan")
    print(f"{MODEL}, task {args.task}, {torch.get_num_threads()} thread(s), chance {chance:.3f}")
    header = ["configuration", "avg bits", "items", "wall s", "CPU s", "acc", "acc_norm"]
    print(f"{header[0]:<14} " + " ".join(f"{h:>8}" for h in header[1:]))
    for label in labels:
        if label == "fp":
            qbase.restore()
            bits = 32.0
        else:
            option = QuantConfig(UNIFORM_BITS[label], 8, "fp32", 64, 256)
            mqc = ModelQConfig.uniform(qbase.targets, option, name=label)
            qbase.apply(mqc)
            bits = mqc.avg_bits
        clock, cpu = time.perf_counter(), time.process_time()
        metrics, protocol = suite.run(loaded.model, loaded.tokenizer, args.limit)
        wall, cpu = time.perf_counter() - clock, time.process_time() - cpu
        items = protocol["tasks"][args.task]["n_samples"]["effective"]
        acc = metrics[f"lm_eval/{args.task}/acc"]
        acc_norm = metrics[f"lm_eval/{args.task}/acc_norm"]
        row = f"{bits:>8.3f} {items:>8} {wall:>8.1f} {cpu:>8.1f} {acc:>8.3f} {acc_norm:>8.3f}"
        print(f"{label:<14} {row}", flush=True)


if __name__ == "__main__":
    main()
