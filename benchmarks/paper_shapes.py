"""The paper-scale code paths on models of the paper's shapes, with random weights.

The hub is out of reach here, so the paper's models (RoBERTa-large, Qwen2.5-1.5B / 3B,
LLaMA-2-7B; their shapes: ``coalora.pricing.shapes``) are built from their published shapes
with random weights and the tiny models' tokenizers (the vocabulary shrinks to the
tokenizer's; every quantized matrix keeps its real shape). Each is then run through the same
functions as the workflow's rules: ``run_training`` (CoA-LoRA with the search, then QLoRA at
one budget) and ``evaluate_configs`` under two ILP configurations. Printed per model: block
parameters, each method's steady seconds per step (the median step, leaving out the first
and the one holding the search round, whose own seconds are printed beside it), CoA-LoRA's
ratio to its floor K x QLoRA's step, the evaluation seconds per configuration and each
method's peak GPU memory (the run's peak, its model, cost table and evaluation included),
against the goals (peak <= 40 GB, ratio <= 1.15). The metrics themselves mean nothing
(random weights).

``--json FILE`` writes the measurements as a cost table (``coalora.pricing.costs``) with the
device, date, commit and this command, for ``coalora price CONFIG --costs FILE``.

    python benchmarks/paper_shapes.py --dtype bf16 --json costs.json   # all shapes, GPU
    python benchmarks/paper_shapes.py --device cpu --layers 1 --steps 4 --batch-size 2 --max-length 32
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

from coalora import precision  # noqa: E402
from coalora.budgets import AllocationSpec  # noqa: E402
from coalora.evaluate import EvalSettings, Trained, evaluate_configs  # noqa: E402
from coalora.io import write_json  # noqa: E402
from coalora.machine import machine_info  # noqa: E402
from coalora.models import tiny_tokenizer_dir  # noqa: E402
from coalora.pricing.costs import FORMAT  # noqa: E402
from coalora.pricing.shapes import PAPER_SHAPES, block_parameters, transformers_config  # noqa: E402
from coalora.runner import EPOCH_LOG_FILE, run_training  # noqa: E402
from coalora.train import TrainSettings  # noqa: E402

SHAPES = PAPER_SHAPES
TASKS = {"classification": "bible-testament", "causal-lm": "bible-lm"}  # local, offline
GOAL_PEAK_GB = 40.0  # one 40 GB GPU (an A100-40GB) holds every paper shape in bf16
GOAL_FLOOR_RATIO = 1.15  # CoA-LoRA's step over K x QLoRA's, on a GPU
REPO = Path(__file__).resolve().parents[1]


def task_of(name: str) -> str:
    return TASKS[SHAPES[name]["kind"]]


def build_model_dir(
    name: str, out: Path, seed: int = 0, layers: int | None = None, dtype=torch.float32,
    device: str = "cpu",
) -> Path:  # fmt: skip
    """Write a random-init model of ``name``'s shape plus a tiny tokenizer to ``out``
    (``layers``: keep only that many blocks, for a quick check of the code path; ``dtype``:
    the dtype its weights ship in, e.g. bf16 as the hub's Qwen2.5 and LLaMA-2 checkpoints;
    ``device``: where the random weights are drawn, a GPU draws a 7B model in seconds)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    encoder = SHAPES[name]["kind"] == "classification"
    tokenizer = AutoTokenizer.from_pretrained(
        tiny_tokenizer_dir("tiny-bert" if encoder else "tiny-llama")
    )
    config = transformers_config(
        name, vocab_size=len(tokenizer), layers=layers, pad_token_id=tokenizer.pad_token_id
    )
    family = SHAPES[name]["family"]
    architecture = {"roberta": "RobertaForSequenceClassification", "qwen2": "Qwen2ForCausalLM"}
    config.architectures = [architecture.get(family, "LlamaForCausalLM")]
    auto = AutoModelForSequenceClassification if encoder else AutoModelForCausalLM
    torch.manual_seed(seed)
    with torch.device(device):
        model = auto.from_config(config, dtype=dtype)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    return out


class StepClock:
    """Seconds between successive optimizer steps (each mark after the device's queued work)."""

    def __init__(self, device: str):
        self.device = device
        self.marks: list[float] = []

    def __enter__(self):
        def mark(*_):
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            self.marks.append(time.perf_counter())

        self.handle = register_optimizer_step_post_hook(mark)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def median_step(self, search_after: int) -> float:
        """The median step, leaving out the first (its configurations' first quantization)
        and the one holding the search round run after step ``search_after``."""
        steps = [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]
        return statistics.median(t for k, t in enumerate(steps) if k not in (0, search_after - 1))


def run_shape(name: str, args, work: Path) -> dict:
    cuda = args.device.startswith("cuda")
    weights = torch.float32 if SHAPES[name]["kind"] == "classification" else torch.bfloat16
    model_dir = build_model_dir(
        name, work / name, layers=args.layers, dtype=weights, device=args.device
    )
    settings = TrainSettings.from_dict(
        dict(
            steps=args.steps, batch_size=args.batch_size, max_length=args.max_length, r=64,
            alpha=16, lr=1e-4, seed=0, device=args.device, configs_per_step=2,
            epoch_steps=max(1, args.steps // 2), search_candidates=2, search_eval_batches=1,
            compute_dtype=args.dtype,
        )
    )  # fmt: skip
    dtype = precision.setting_of(precision.record_name(precision.resolve(args.dtype, args.device)))
    row = {"model": name, "dtype": dtype, "block params M": round(block_parameters(name, args.layers) / 1e6, 1)}  # fmt: skip
    measured = {}
    for method, extra in (
        ("coalora", {"budgets": [2.5, 3.0, 3.5, 4.0]}),
        ("qlora", {"budget": 3.0}),
    ):
        out = work / f"{name}-{method}"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with StepClock(args.device) as clock:
            run_training(
                model=str(model_dir), task=task_of(name), method=method, settings=settings,
                out=out, max_train=args.batch_size * args.steps * 2,
                allocation=AllocationSpec(max_elements=args.max_elements),
                progress=False, **extra,
            )  # fmt: skip
        step = clock.median_step(search_after=settings.epoch_steps)
        row[f"{method} s/step"] = round(step, 4)
        measured[method] = {"step_seconds": step}
        if method == "coalora":
            logs = out / EPOCH_LOG_FILE
            epochs = json.loads(logs.read_text()) if logs.is_file() else []
            search = [log["seconds"]["total"] for log in epochs if "seconds" in log]
            row["search s/round"] = round(statistics.median(search), 2) if search else None
            started = time.perf_counter()
            evaluate_configs(
                Trained(out), [2.5, 3.5],
                settings=EvalSettings(
                    limit=args.eval_limit, compute_dtype=args.dtype,
                    lm_eval_tasks=() if args.no_lm_eval else None,
                ),
                allocation=AllocationSpec(max_elements=args.max_elements),
            )  # fmt: skip
            measured[method]["eval_seconds_per_config"] = (time.perf_counter() - started) / 2
            measured[method]["eval_examples"] = args.eval_limit
            row["eval s/config"] = round(measured[method]["eval_seconds_per_config"], 1)
        if cuda:
            peak = torch.cuda.max_memory_allocated() / 2**30
        else:  # the process's high-water mark so far (KiB on Linux): an upper bound
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        measured[method]["peak_memory_gib"] = peak
        row[f"{method} peak GiB"] = round(peak, 2)
    row["coalora / floor"] = round(
        measured["coalora"]["step_seconds"] / (2 * measured["qlora"]["step_seconds"]), 3
    )
    row["measured"] = measured
    return row


def cost_table(rows: list[dict], args, started: datetime.datetime) -> dict:
    """The measurements as a cost table (``coalora.pricing.costs``)."""
    cuda = args.device.startswith("cuda")
    cpu = f"CPU ({machine_info('cpu')['cpu']}, {os.cpu_count()} cores)"
    device = torch.cuda.get_device_name() if cuda else cpu
    commit = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=7"],
        capture_output=True, text=True, check=False,
    ).stdout.strip() or "unknown"  # fmt: skip
    command = shlex.join(["python", "benchmarks/paper_shapes.py", *sys.argv[1:]])
    checks = []
    table_rows = []
    for row in rows:
        name = row["model"]
        peak = max(m["peak_memory_gib"] for m in row["measured"].values())
        checks.append({
            "shape": name, "layers": args.layers or SHAPES[name]["num_hidden_layers"],
            "peak_gb": round(peak * 2**30 / 1e9, 2) if cuda else None, "goal_peak_gb": GOAL_PEAK_GB,
            "floor_ratio": row["coalora / floor"], "goal_floor_ratio": GOAL_FLOOR_RATIO,
        })  # fmt: skip
        for method, m in row["measured"].items():
            note = "steady step: the median, the first and the search round's left out"
            if method == "coalora" and row.get("search s/round") is not None:
                note += (
                    f"; a search round ({2} candidates x 1 batch) took {row['search s/round']} s"
                )
            if not cuda:
                note += "; peak memory: the process's peak RSS so far on the CPU, not GPU memory"
            if args.layers:
                note += f"; {args.layers} of {SHAPES[name]['num_hidden_layers']} blocks"
            table_rows.append({
                "shape": name, "method": method, "dtype": row["dtype"], "device": device,
                "date": f"{started:%Y-%m-%d}", "commit": commit, "command": command,
                "block_parameters": block_parameters(name, args.layers),
                "batch_size": args.batch_size, "max_length": args.max_length,
                "configs_per_step": 2, **{k: round(v, 5) for k, v in m.items()}, "note": note,
            })  # fmt: skip
    return {
        "format": FORMAT,
        "about": f"benchmarks/paper_shapes.py on {device}, {started:%Y-%m-%d %H:%M} UTC",
        "machine": {
            "device": device,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "date": f"{started:%Y-%m-%dT%H:%M:%SZ}",
            "commit": commit,
            "checks": checks,
        },  # fmt: skip
        "rows": table_rows,
    }


def _params(model_dir: Path):
    from safetensors import safe_open

    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(f, "pt") as handle:
            for key in handle.keys():
                yield handle.get_slice(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=precision.SETTINGS, help="compute dtype")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--eval-limit", type=int, default=16)
    parser.add_argument("--layers", type=int, default=None, help="fewer blocks (quick check)")
    parser.add_argument(
        "--max-elements", type=int, default=65536, help="cost-table sampling per matrix"
    )
    parser.add_argument(
        "--no-lm-eval", action="store_true", help="causal LMs: perplexity only (a quick check)"
    )
    parser.add_argument("--json", help="write the measurements as a cost table (coalora price)")
    args = parser.parse_args()
    unknown = set(args.shapes.split(",")) - set(SHAPES)
    if unknown:
        parser.error(f"--shapes: unknown {', '.join(sorted(unknown))}; known: {', '.join(SHAPES)}")
    if args.steps < 4:
        parser.error("--steps must be >= 4 (the first step and the search round's are left out)")
    started = datetime.datetime.now(datetime.UTC)
    rows = []
    with tempfile.TemporaryDirectory(prefix="paper-shapes-") as tmp:
        for name in args.shapes.split(","):
            row = run_shape(name, args, Path(tmp))
            print(json.dumps({k: v for k, v in row.items() if k != "measured"}), flush=True)
            rows.append(row)
    keys = list(dict.fromkeys(k for row in rows for k in row if k != "measured"))
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")
    table = cost_table(rows, args, started)
    for check in table["machine"]["checks"]:
        peak = "not measured (no GPU)" if check["peak_gb"] is None else (
            f"{check['peak_gb']} GB ({'met' if check['peak_gb'] <= GOAL_PEAK_GB else 'NOT met'})"
        )  # fmt: skip
        ratio = check["floor_ratio"]
        print(
            f"{check['shape']} ({check['layers']} blocks): peak {peak}, goal <= {GOAL_PEAK_GB} GB; "
            f"CoA-LoRA / (2 x QLoRA) step {ratio} "
            f"({'met' if ratio <= GOAL_FLOOR_RATIO else 'NOT met'}), goal <= {GOAL_FLOOR_RATIO}"
        )
    if args.json:
        write_json(args.json, table)
        print(f"wrote {args.json}: {len(table['rows'])} cost rows")


if __name__ == "__main__":
    main()
