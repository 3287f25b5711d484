"""The Snakemake DAG: dry runs of the presets, schema errors, the CI preset end to end,
and reruns that rebuild only what depends on a deleted file."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def snakemake(workdir, *args, check=True):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env=ENV, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\S+)\s+(\d+)$", table, re.M)}


def preset(name):
    return str(REPO / "config" / name)


def test_default_preset_dry_run(tmp_path):
    # The embedded default is found beside the Snakefile, whatever the working directory.
    proc = snakemake(tmp_path, "-n", "-p")
    counts = job_counts(proc.stdout)
    # SmolLM2 and MiniLM x 4 methods, MiniLM's 4 CoA-LoRA variants (rank, search mode), and
    # MiniLM under INT with CoA-LoRA and QLoRA; QLoRA and LQ-LoRA train once per evaluation
    # budget (4): 2 x 4 x 2 + 4 per-configuration runs.
    assert counts["prepare"] == 3 and counts["cost_table"] == 3
    assert counts["train"] == 2 * 2 + 4 + 1
    assert counts["train_per_config"] == 2 * 4 * 2 + 4 and counts["evaluate"] == 20
    assert counts["evaluate_minilm-testament"] == 2 + 4  # coalora, shared-lora + 4 variants
    assert counts["evaluate_smollm2-bible"] == 2 and counts["evaluate_base_smollm2-bible"] == 1
    # LQ-LoRA's configurations come from its own costs (W - SVD_r(W)) and ILP.
    assert counts["cost_table_lowrank"] == 2 and counts["allocate_smollm2-bible_lqlora"] == 1
    assert "qconfigs-lqlora/b2.5.json" in proc.stdout
    # Every table and figure: table1, the further tables, Pareto / seen-unseen per experiment,
    # the search ablation where search variants exist.
    assert counts["table1"] == 1 and counts["tables"] == 1
    assert counts["pareto_figure"] == 3 and counts["seen_unseen_figure"] == 3
    assert counts["search_ablation_figure"] == 1
    # A variant trains its registered method with its own settings and is evaluated under
    # its label.
    assert re.search(r"train .*--method coalora .*--set r=8 .*coalora-r8/checkpoint", proc.stdout)
    assert "--label coalora-frozen" in proc.stdout


def test_paper_preset_dry_run(tmp_path):
    counts = job_counts(snakemake(tmp_path, "-n", "--configfile", preset("paper.yaml")).stdout)
    # 4 GLUE tasks x 6 evaluation budgets x 4 per-configuration methods, 3 C4 models x 4 x 2.
    assert counts["prepare"] == 7
    assert counts["train_per_config"] == 4 * 6 * 4 + 3 * 4 * 2
    assert counts["train"] == 4 * 2 + 3 * 2


@pytest.mark.parametrize(
    "override,message",
    [
        ("bogus=1", "'bogus' was unexpected"),
        ("quantizer=fp4", "'fp4' is not one of"),
    ],
)
def test_schema_errors_name_the_key(tmp_path, override, message):
    proc = snakemake(
        tmp_path, "-n", "--configfile", preset("ci.yaml"), "--config", override, check=False
    )
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_schema_rejects_unknown_experiment_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = Path(preset("ci.yaml")).read_text().replace("max_train: 64", "max_trian: 64", 1)
    bad.write_text(text)
    proc = snakemake(tmp_path, "-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0 and "'max_trian' was unexpected" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_ci_preset_end_to_end_and_partial_rerun(tmp_path):
    snakemake(tmp_path, "--cores", "2", "--configfile", preset("ci.yaml"))
    results = tmp_path / "results-ci"
    with open(results / "table1.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {"task", "method", "hv", "acc_gap", "train_seconds", "solutions"} <= set(rows[0])
    pairs = {(r["task"], r["method"]) for r in rows}
    assert ("bible-lm", "coalora") in pairs and ("bible-testament", "qlora") in pairs
    assert ("bible-lm", "none") in pairs
    for row in rows:
        assert float(row["hv"]) > 0
        if row["method"] not in ("none",):
            assert float(row["train_seconds"]) > 0
    for figure in ("tiny-llama-lm_pareto.png", "tiny-llama-lm_pareto.svg"):
        assert (results / "figures" / figure).stat().st_size > 1000
    assert not list(results.rglob("*.tmp"))

    # Delete one evaluation and ask for it: only its job runs; then the default target reruns
    # only what depends on it (the table and that experiment's figure), with the same numbers.
    deleted = results / "tiny-llama-lm" / "qlora" / "eval" / "b3.json"
    deleted.unlink()
    args = ("--cores", "2", "--configfile", preset("ci.yaml"))
    target = str(deleted.relative_to(tmp_path))  # before --configfile, which takes nargs
    counts = job_counts(snakemake(tmp_path, target, "-n", *args).stdout)
    assert counts == {"evaluate": 1, "total": 1}
    snakemake(tmp_path, target, *args)
    counts = job_counts(snakemake(tmp_path, "-n", *args).stdout)
    assert counts == {"table1": 1, "pareto_figure": 1, "all": 1, "total": 3}
    snakemake(tmp_path, *args)
    with open(results / "table1.csv") as handle:
        again = list(csv.DictReader(handle))
    strip = lambda rs: [{k: v for k, v in r.items() if k != "train_seconds"} for r in rs]  # noqa: E731
    assert strip(again) == strip(rows)
