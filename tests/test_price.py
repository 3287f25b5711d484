"""`coalora price`: the jobs it counts are the DAG's (compared with `snakemake -n` on the
presets), its GPU-hours are the hand arithmetic on a constructed config and cost table,
scaled figures say so, and bad input is one line with exit 2."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coalora.cli import run_here
from coalora.methods import method_traits
from coalora.pricing.costs import DEFAULT_COSTS, load_costs
from coalora.pricing.jobs import counts_by_rule, grid_jobs, validated
from coalora.pricing.price import price_jobs
from coalora.pricing.shapes import block_parameters

REPO = Path(__file__).resolve().parents[1]


def dag_counts(tmp_path, *args) -> dict[str, int]:
    """The 'Job stats' of `snakemake -n` (as tests/test_workflow.py reads them)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, check=True)
    table = proc.stdout.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\S+)\s+(\d+)$", table, re.M)}


@pytest.mark.parametrize("preset", ["paper.yaml", "ci.yaml", "config.yaml"])
def test_job_counts_are_the_dags(tmp_path, preset):
    path = REPO / "config" / preset
    config = validated(yaml.safe_load(path.read_text()))
    counts = counts_by_rule(grid_jobs(config, method_traits()))
    counts["total"] = sum(counts.values())
    assert counts == dag_counts(tmp_path, "--configfile", str(path))


def cost_row(method, step, eval_seconds=None, peak=None, **extra):
    return {
        "shape": "qwen2.5-1.5b", "method": method, "dtype": "bf16", "device": "test GPU",
        "date": "2026-12-08", "commit": "abc1234", "command": "constructed",
        "block_parameters": 1310340608, "batch_size": 4, "max_length": 256,
        "configs_per_step": 2, "step_seconds": step, "eval_seconds_per_config": eval_seconds,
        "eval_examples": 16 if eval_seconds else None, "peak_memory_gib": peak, **extra,
    }  # fmt: skip


def write_costs(path, *rows):
    path.write_text(json.dumps({"format": "coalora-costs/1", "rows": list(rows)}))
    return path


SMALL = {
    "compute_dtype": "bf16",
    "experiments": {
        "q": {
            "model": "Qwen/Qwen2.5-1.5B", "task": "c4", "methods": ["coalora", "qlora"],
            "eval_budgets": [3.0, 4.0], "unseen_budgets": [3.5], "seeds": [0, 1], "steps": 100,
            "train": {"batch_size": 8, "max_length": 256, "configs_per_step": 2},
            "resources": {"train": {"gpu": 2}, "evaluate": {"gpu": 1}},
        }
    },
}  # fmt: skip


def test_gpu_hours_are_the_hand_arithmetic(tmp_path):
    costs = write_costs(
        tmp_path / "costs.json",
        cost_row("coalora", 2.0, eval_seconds=10.0, peak=20.0),
        cost_row("qlora", 0.5, peak=12.0),
    )
    config = validated(json.loads(json.dumps(SMALL)))
    lines, unpriced = price_jobs(config, load_costs(costs), method_traits())
    by = {(x.rule, x.label): x for x in lines}
    # batch 8 x 256 = twice the measured 4 x 256 tokens: CoA-LoRA 100 x 2.0 x 2 = 400 s a
    # run, on 2 GPUs, at 2 seeds; its evaluations 3 configurations x 10 s on 1 GPU, at the
    # end and at each of the schema's default two snapshots.
    assert config["snapshots"] == [0.25, 0.5]
    assert by["train", "coalora"].jobs == 2
    assert by["train", "coalora"].hours * 3600 == pytest.approx(400)
    assert by["train", "coalora"].gpu_hours == pytest.approx(2 * 400 * 2 / 3600)
    assert by["evaluate", "coalora"].hours * 3600 == pytest.approx(3 * 3 * 10)
    # QLoRA: 2 budgets x 2 seeds, each 100 x 0.5 x 2 s + its evaluation (10 s) three times.
    assert by["train_per_config", "qlora"].jobs == 4
    assert by["train_per_config", "qlora"].hours * 3600 == pytest.approx(100 + 3 * 10)
    assert by["evaluate_base", "none"].jobs == 1  # the first seed only, no snapshots
    total = sum(x.gpu_hours for x in lines) * 3600
    assert total == pytest.approx(2 * 400 * 2 + 2 * 90 + 4 * 130 * 2 + 30)
    # without snapshots, one evaluation each
    bare = validated(json.loads(json.dumps(dict(SMALL, snapshots=[]))))
    lines, _ = price_jobs(bare, load_costs(costs), method_traits())
    by = {(x.rule, x.label): x for x in lines}
    assert by["evaluate", "coalora"].hours * 3600 == pytest.approx(30)
    assert by["train_per_config", "qlora"].hours * 3600 == pytest.approx(110)
    assert by["train", "coalora"].memory.value == 20.0
    assert by["train", "coalora"].time.scalings == ("x2 tokens",)
    assert {j.rule for j in unpriced} >= {"prepare", "cost_table", "allocate", "table1"}


def price(argv, capsys):
    status = run_here(["price", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_scaled_and_substituted_figures_say_so(tmp_path, capsys):
    # Only fp32 Qwen2.5-1.5B rows: LLaMA-2-7B's are scaled by block parameters, Shared-LoRA
    # is priced as K QLoRA passes, and bf16 jobs name the fp32 measurement.
    config = dict(SMALL, experiments={"l": dict(SMALL["experiments"]["q"], model="meta-llama/Llama-2-7b-hf", methods=["shared-lora"])})  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    costs = write_costs(
        tmp_path / "costs.json",
        cost_row("coalora", 2.0, eval_seconds=10.0, peak=20.0, dtype="fp32"),
        cost_row("qlora", 0.5, dtype="fp32"),
    )
    status, out, _ = price([tmp_path / "c.yaml", "--costs", costs], capsys)
    assert status == 0
    line = next(x for x in out.splitlines() if x.split()[:2] == ["train", "shared-lora"])
    assert "step [1] as qlora x4.94 params x2 tokens x2 passes fp32 for bf16" in line
    assert "[1] qwen2.5-1.5b qlora fp32: test GPU, 2026-12-08, commit abc1234, `constructed`" in out
    # 100 steps x 0.5 s x 4.94 (parameters) x 2 (tokens) x 2 (passes) = 988 s, 2 GPUs, 2 seeds
    hours = 100 * 0.5 * 6476271616 / 1310340608 * 2 * 2 / 3600
    assert f"{hours:7.2f}" in line and f"{hours * 2 * 2:7.1f}" in line


def test_paper_grid_priced_from_the_repository_rows(capsys):
    status, out, _ = price([REPO / "config" / "paper.yaml"], capsys)
    assert status == 0
    assert out.startswith(f"costs: {DEFAULT_COSTS.relative_to(REPO)} (the default)")
    assert "total: 251 jobs, 184 on GPUs" in out
    llama = out.split("llama-2-7b-c4:")[1].split("experiment:")[0]
    # No 7B row: scaled from the measured Qwen2.5-1.5B shape, and said so.
    assert "x4.94 params" in llama and "x4.94 params" not in out.split("qwen2.5-3b-c4:")[0]
    assert "NVIDIA H200, 2026-11-28" in out and "CPU (AMD EPYC" in out


def test_the_documented_output_is_the_commands(capsys):
    doc = (REPO / "docs" / "cluster.md").read_text()
    block = doc.split("$ coalora price config/paper.yaml\n")[1].split("```")[0]
    _, out, _ = price([REPO / "config" / "paper.yaml"], capsys)
    assert block.strip() == out.strip()


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda t: dict(SMALL, bogus=1), "does not validate: ValidationError: Additional properties"),
        (lambda t: {"experiments": {"x": dict(SMALL["experiments"]["q"], model="tiny-llama")}}, "model 'tiny-llama' has no cost basis"),
        (lambda t: {"experiments": {"x": dict(SMALL["experiments"]["q"], methods=["nope"])}}, "'nope' names unknown method"),
    ],
)  # fmt: skip
def test_bad_configs_are_one_line_exit_2(tmp_path, capsys, make, message):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(make(tmp_path)))
    status, out, err = price([tmp_path / "c.yaml"], capsys)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("coalora: error: ") and message in err


@pytest.mark.parametrize(
    "rows,message",
    [
        ([cost_row("coalora", 2.0, eval_seconds=1.0, peak=1.0, speed=3)], "row 1: unknown key(s) speed"),
        ([dict(cost_row("coalora", 2.0), shape="gpt-5")], "unknown shape 'gpt-5'"),
        ([dict(cost_row("coalora", 2.0), commit=None)], "row 1: missing commit"),
        ([cost_row("coalora", -1.0)], "step_seconds must be a positive number"),
        ([cost_row("coalora", 2.0, eval_seconds=1.0, peak=1.0)], "no cost row has step_seconds for method 'qlora'"),
    ],
)  # fmt: skip
def test_bad_cost_tables_are_one_line_exit_2(tmp_path, capsys, rows, message):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(SMALL))
    costs = write_costs(tmp_path / "costs.json", *rows)
    status, out, err = price([tmp_path / "c.yaml", "--costs", costs], capsys)
    assert status == 2 and out == "" and message in err and err.count("\n") == 1


def test_missing_files_are_one_line_exit_2(tmp_path, capsys):
    status, _, err = price([tmp_path / "none.yaml"], capsys)
    assert status == 2 and "no such config" in err
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(SMALL))
    status, _, err = price([tmp_path / "c.yaml", "--costs", tmp_path / "none.json"], capsys)
    assert status == 2 and "none.json" in err


@pytest.mark.slow
def test_gpu_check_cpu_part_writes_a_table_coalora_price_reads(tmp_path):
    # benchmarks/gpu_check.sh's CPU-possible part: the cuda tests skip, one block of two
    # paper shapes is measured on the CPU, the workflow's micro run is dry; its table prices
    # the paper's grid, every figure scaled from one block to the whole shape, and says so.
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "PYTHON": sys.executable}
    proc = subprocess.run(
        [str(REPO / "benchmarks" / "gpu_check.sh"), str(out)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = load_costs(out)
    assert {(r.shape, r.method) for r in rows} == {
        (s, m) for s in ("roberta-large", "qwen2.5-1.5b") for m in ("coalora", "qlora")
    }  # fmt: skip
    assert all(
        r.block_parameters == block_parameters(r.shape, 1) and "CPU" in r.device for r in rows
    )
    assert all(r.step_seconds > 0 and "not GPU memory" in r.note for r in rows)
    machine = json.loads(out.read_text())["machine"]
    assert machine["torch"] and machine["commit"] and len(machine["checks"]) == 2
    assert "CoA-LoRA / (2 x QLoRA) step" in proc.stdout
    priced = proc.stdout.split("4/4 the paper's grid priced")[1]
    assert "total: 251 jobs, 184 on GPUs" in priced
    llama = priced.split("llama-2-7b-c4:")[1].split("experiment:")[0]
    # LLaMA-2-7B scaled from one Qwen2.5-1.5B block measured on the CPU, and said so
    one_block = block_parameters("qwen2.5-1.5b", 1)
    assert f"x{block_parameters('llama-2-7b') / one_block:.3g} params" in llama
    assert "qwen2.5-1.5b coalora fp32: CPU (" in priced
