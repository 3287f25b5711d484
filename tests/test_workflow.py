"""The Snakemake DAG: dry runs of the presets, schema errors, the CI preset end to end,
reruns that rebuild only what depends on a deleted file, and a run killed midway that
finishes with the same tables when started again."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

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
    # SmolLM2 (NF) at S seeds: CoA-LoRA and Shared-LoRA train once per seed, QLoRA once per
    # evaluation budget (2) and seed, evaluated in its training job.
    default = yaml.safe_load(Path(preset("config.yaml")).read_text())
    experiments = default["experiments"]
    assert sorted(experiments) == ["smollm2-bible"]
    s = len(default["seeds"])
    assert s >= 3  # the fewest seeds at which a verdict is given
    assert counts["prepare"] == 1 and counts["cost_table"] == 1
    assert counts["train"] == 2 * s
    assert counts["train_per_config"] == 2 * s and "evaluate" not in counts
    # The unadapted base (a reference row, in no claim) is evaluated at the first seed only.
    assert counts["evaluate_smollm2-bible"] == 2 * s
    assert counts["evaluate_base_smollm2-bible"] == 1
    # Every table, the claims and every figure, the learning curves included.
    assert counts["table1"] == 1 and counts["tables"] == 1 and counts["claims"] == 1
    assert counts["pareto_figure"] == 1 and counts["learning_curve_figure"] == 1
    # The seed is in every path and reaches training; equal steps for every method (the
    # paper's protocol); snapshots at 1/4 and 1/2 of the steps; a per-configuration run writes
    # its evaluation and its snapshots' evaluations too.
    assert re.search(
        r"--steps 48 .*--set seed=1 .*--set 'snapshots=\[0.25, 0.5\]' .*"
        r"smollm2-bible/qlora/s1/b3/checkpoint --evaluate-out "
        r"results/smollm2-bible/qlora/s1/eval/b3.json --label qlora .*"
        r"--snapshots-out results/smollm2-bible/qlora/s1/curve",
        proc.stdout,
    )
    assert re.search(
        r"--method coalora --steps 48 .*smollm2-bible/coalora/s1/checkpoint", proc.stdout
    )
    # A few perplexity windows, 100 lm-eval items of bible_cloze on every configuration at the
    # first seed (lm_eval_seeds: 1), none at the others (nor at any snapshot).
    assert re.search(
        r"--task bible-lm .*--limit 8 --window 256 --lm-eval-limit 100 --lm-eval-tasks bible_cloze",
        proc.stdout,
    )
    evaluations = [line for line in proc.stdout.splitlines() if "coalora.cli " in line]
    with_lm_eval = [line for line in evaluations if "--lm-eval-tasks bible_cloze" in line]
    assert with_lm_eval and all(
        re.search(r"results/smollm2-bible/[a-z-]+/s0/", line) for line in with_lm_eval
    )
    # At seed 0: CoA-LoRA, Shared-LoRA, the base, QLoRA's 2 per-configuration runs
    assert len(with_lm_eval) == 5


def test_overnight_preset_dry_run(tmp_path):
    """config/overnight.yaml: every claim testable on a CPU (the encoder's, the search
    ablation, SmolLM2 under NF and INT), 4 seeds, 48 steps for every method."""
    proc = snakemake(tmp_path, "-n", "-p", "--configfile", preset("overnight.yaml"))
    counts = job_counts(proc.stdout)
    assert counts["prepare"] == 3 and counts["learning_curve_figure"] == 3
    # CoA-LoRA, its two search variants and Shared-LoRA (MiniLM), CoA-LoRA and Shared-LoRA
    # (NF), CoA-LoRA (INT): one run per seed each
    assert counts["train"] == 4 * (4 + 2 + 1)
    # QLoRA and LQ-LoRA at 3 (MiniLM) and 2 (NF) budgets, QLoRA at 2 (INT); lora-fp per seed
    assert counts["train_per_config"] == 4 * (2 * 3 + 2 * 2 + 2)
    assert counts["train_own_config"] == 4 and counts["search_ablation_figure"] == 1
    steps = set(re.findall(r"coalora.cli train .*?--steps (\d+)", proc.stdout))
    assert steps == {"48"}


def test_the_compute_dtype_reaches_every_training_and_evaluation_command(tmp_path):
    """``compute_dtype`` (global, or an experiment's train: / eval:) becomes the CLI's setting;
    ``auto``, the CLI's own default, adds nothing (the default's commands are unchanged)."""
    default = snakemake(tmp_path, "-n", "-p", "--configfile", preset("ci.yaml")).stdout
    assert "compute_dtype=" not in default and "--compute-dtype" not in default
    bf16 = snakemake(
        tmp_path, "-n", "-p", "--configfile", preset("ci.yaml"), "--config", "compute_dtype=bf16"
    ).stdout
    trains = [line for line in bf16.splitlines() if "coalora.cli train " in line]
    evaluations = [line for line in bf16.splitlines() if "coalora.cli evaluate " in line]
    assert trains and all("--set 'compute_dtype=\"bf16\"'" in line for line in trains)
    assert evaluations and all("--compute-dtype bf16" in line for line in evaluations)
    assert all("--compute-dtype bf16" in line for line in trains if "--evaluate-out" in line)


def test_steps_per_method_must_name_every_method(tmp_path):
    conf = yaml.safe_load(Path(preset("ci.yaml")).read_text())
    first = next(iter(conf["experiments"]))
    conf["experiments"][first]["steps"] = {"coalora": 4}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(conf, sort_keys=False))
    proc = snakemake(tmp_path, "-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    assert (
        f"experiment {first!r}: `steps` has no entry for method 'qlora'"
        in proc.stdout + proc.stderr
    )


def test_paper_preset_dry_run(tmp_path):
    proc = snakemake(tmp_path, "-n", "--configfile", preset("paper.yaml"))
    counts = job_counts(proc.stdout)
    # 4 GLUE tasks x 6 evaluation budgets x 4 per-configuration methods, 3 C4 models x 4 x 2;
    # SST-2's ablations: QLoRA at 2 more ranks (x 6 budgets) and 4 CoA-LoRA variants; SST-2
    # under INT: QLoRA x 6 and CoA-LoRA.
    assert counts["prepare"] == 8
    assert counts["train_per_config"] == 4 * 6 * 4 + 3 * 4 * 2 + 2 * 6 + 6
    assert counts["train"] == 4 * 2 + 3 * 2 + 4 + 1
    assert counts["evaluate_roberta-large-sst2"] == 2 + 4  # coalora, shared-lora + 4 variants
    assert counts["claims"] == 1
    # LQ-LoRA's configurations come from its own costs (W - SVD_r(W)) and ILP.
    assert counts["cost_table_lowrank"] == 7 and "qconfigs-lqlora/b2.5.json" in proc.stdout
    assert counts["search_ablation_figure"] == 1 and counts["tables"] == 1


@pytest.mark.parametrize("args", [(), ("--configfile", preset("ci.yaml"))], ids=["default", "ci"])
def test_snakemake_lint_is_clean(tmp_path, args):
    # `snakemake --lint` exits 1 when it prints a lint ("Lints for rule ..."), 0 when clean.
    proc = snakemake(tmp_path, "--lint", *args, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out[-3000:]
    assert "Congratulations, your workflow is in a good condition!" in out


@pytest.mark.parametrize(
    "override,message",
    [
        ("bogus=1", "'bogus' was unexpected"),
        ("quantizer=fp4", "'fp4' is not one of"),
        ("seed=1", "'seed' was unexpected"),  # a list now: seeds
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


def test_two_experiments_on_one_model_task_and_quantizer_are_refused(tmp_path):
    conf = yaml.safe_load(Path(preset("ci.yaml")).read_text())
    first = next(iter(conf["experiments"]))
    conf["experiments"]["copy"] = dict(conf["experiments"][first])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(conf, sort_keys=False))
    proc = snakemake(tmp_path, "-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    assert f"experiments '{first}' and 'copy' share model" in proc.stdout + proc.stderr


# Columns of the tables that are measured times, so differ between two runs.
TIME_COLUMNS = {"train_seconds"}


def without_times(rows):
    return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in rows]


def read_table(path):
    with open(path) as handle:
        return without_times(csv.DictReader(handle))


# `--config` items per compute dtype the CI preset is run in (auto: as the machine decides).
DTYPE_CONFIG = {"auto": [], "bf16": ["compute_dtype=bf16"]}


def uninterrupted_ci_run(tmp_path_factory, compute_dtype):
    workdir = tmp_path_factory.mktemp(f"ci-run-{compute_dtype}")
    config = DTYPE_CONFIG[compute_dtype]
    args = ("--config", *config) if config else ()
    snakemake(workdir, "--cores", "2", "--configfile", preset("ci.yaml"), *args)
    return workdir


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    """The CI preset run once, uninterrupted (shared by the tests below)."""
    return uninterrupted_ci_run(tmp_path_factory, "auto")


@pytest.fixture(scope="module")
def ci_run_bf16(tmp_path_factory):
    """The CI preset run once in bf16, uninterrupted (on a CPU without bf16 units it runs
    emulated, with the one warning; the killed-run test's reference in bf16)."""
    return uninterrupted_ci_run(tmp_path_factory, "bf16")


@pytest.mark.slow
def test_ci_preset_end_to_end_and_partial_rerun(ci_run):
    from coalora.methods import method_traits

    tmp_path = ci_run
    results = tmp_path / "results-ci"
    with open(results / "table1.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {"task", "method", "hv", "acc_gap", "train_seconds", "solutions"} <= set(rows[0])
    pairs = {(r["task"], r["method"]) for r in rows}
    assert ("bible-lm", "coalora") in pairs and ("bible-testament", "qlora") in pairs
    assert ("bible-lm", "none") in pairs
    serves = {m: t["serves"] for m, t in method_traits().items()}
    for row in rows:
        # A full-precision row (32 bits) lies outside the configuration space: no HV.
        if serves.get(row["method"]) == "full-precision":
            assert row["hv"] == "", row
        else:
            assert float(row["hv"]) > 0, row
        if row["method"] not in ("none",):
            assert float(row["train_seconds"]) > 0
    # Two seeds on the encoder experiment: every number of its rows is over both.
    seeds = {r["method"]: r["n_seeds"] for r in rows if r["task"] == "bible-testament"}
    assert seeds == {"none": "1", "coalora": "2", "qlora": "2", "lora-fp": "2"}
    # LoRA on the unquantized base: one full-precision evaluation per seed, its own row.
    full = results / "tiny-bert-testament" / "lora-fp"
    assert sorted(p.name for p in full.glob("s*/eval/*.json")) == ["full-precision.json"] * 2
    for figure in ("tiny-llama-lm_pareto.png", "tiny-llama-lm_pareto.svg"):
        assert (results / "figures" / figure).stat().st_size > 1000
    assert not list(results.rglob("*.tmp"))
    # The jobs forked from the run's fork server, once it had imported (the first ones start
    # cold meanwhile); it declined none, and it is gone with the run.
    # The server's own lines (a library it imports may log above them: they are its stderr).
    server_log = (results / "logs" / "fork_server.log").read_text().splitlines()
    [ready] = [line for line in server_log if line.startswith("ready: imported in ")]
    assert not [line for line in server_log if line.startswith("declined")]
    served = [line for line in server_log if line.startswith("served")]
    assert len(served) >= 10 and any(" coalora train " in line for line in served)
    socket_path = ready.split("listening on ")[1]
    assert not os.path.exists(socket_path)

    # The claims table: every test row has an interval and a verdict; at two seeds the
    # encoder's rows count seeds and test samples (their verdicts on tiny models may be
    # anything; the verdict logic is tested in tests/test_claims.py).
    with open(results / "claims.csv") as handle:
        claims = list(csv.DictReader(handle))
    bert = [c for c in claims if c["task"] == "bible-testament" and c["statistic"] != "time_ratio"]
    assert bert and all(c["noise"] == "2 seeds + test samples" for c in bert)
    assert all(
        c["verdict"] in ("holds", "contradicted", "inconclusive at this scale") for c in claims
    )
    assert "| C8 |" in (results / "claims.md").read_text()

    # Trained far enough? Every trained run's snapshots are evaluated (1/4 and 1/2 of its 6
    # steps: steps 2 and 3), the learning curves drawn, each test names whether its
    # comparison settled and each side's exposure; snapshots leave the tables alone.
    curve = sorted(results.glob("tiny-llama-lm/coalora/s0/curve/*/*.json"))
    assert [p.relative_to(results / "tiny-llama-lm/coalora/s0/curve").as_posix() for p in curve] == [
        f"{at}/{cfg}.json" for at in ("at-0.25", "at-0.5") for cfg in ("b2.5", "b3", "u2.75")
    ]  # fmt: skip
    half = json.loads(curve[3].read_text())
    assert half["protocol"]["snapshot"] == {"step": 3, "of": 6, "fraction": 0.5}
    assert half["train_steps"] == 3 and half["exposure"]["of"] == 3
    assert not list(results.glob("*/none/s*/curve"))  # the unadapted base trains nothing
    for exp in ("tiny-llama-lm", "tiny-bert-testament"):
        assert (results / "figures" / f"{exp}_learning_curve.png").stat().st_size > 1000
    assert all(c["trained"] in ("settled", "still moving", "not gated", "no curve") for c in claims)
    assert {c["trained"] for c in claims if c["statistic"] == "time_ratio"} == {"not gated"}
    gated = [c for c in claims if c["trained"] in ("still moving", "no curve")]
    assert all(c["verdict"] == "inconclusive at this scale" for c in gated)
    assert all(c["exposure"] and "steps" in c["exposure"] for c in claims)
    text = (results / "claims.md").read_text()
    assert "## Trained far enough?" in text and "| at 0.25 (step 2) | at 0.5 (step 3) |" in text

    # Delete one evaluation of seed 1 and ask for it: only its job runs (QLoRA's run at that
    # configuration, which writes it); then the default target reruns only what depends on
    # it (tables, claims, that experiment's figures), with the same numbers.
    deleted = results / "tiny-bert-testament" / "qlora" / "s1" / "eval" / "b3.json"
    deleted.unlink()
    args = ("--cores", "2", "--configfile", preset("ci.yaml"))
    target = str(deleted.relative_to(tmp_path))  # before --configfile, which takes nargs
    counts = job_counts(snakemake(tmp_path, target, "-n", *args).stdout)
    assert counts == {"train_per_config": 1, "total": 1}  # it trains and evaluates
    before = (results / "logs" / "fork_server.log").read_text()
    snakemake(tmp_path, target, *args)
    # One job: no fork server (it would start a new log), the job ran cold.
    assert (results / "logs" / "fork_server.log").read_text() == before
    counts = job_counts(snakemake(tmp_path, "-n", *args).stdout)
    assert counts == {
        "table1": 1, "tables": 1, "claims": 1, "pareto_figure": 1, "seen_unseen_figure": 1,
        "learning_curve_figure": 1, "all": 1, "total": 7,
    }  # fmt: skip
    snakemake(tmp_path, *args)
    assert read_table(results / "table1.csv") == without_times(rows)


@pytest.mark.slow
def test_run_floor_counts_every_job_once(ci_run):
    """Every job leaves a benchmark file beside its log, and benchmarks/run_floor.py on the CI
    run counts each once: a row per experiment and one for the tables and claims, engine
    seconds (timed inside the training and evaluation jobs) within those jobs' seconds."""
    results = ci_run / "results-ci"
    logs = {
        p.relative_to(results / "logs").with_suffix("") for p in (results / "logs").rglob("*.log")
    }
    logs.discard(Path("fork_server"))
    tsvs = list((results / "benchmarks").rglob("*.tsv"))
    assert {p.relative_to(results / "benchmarks").with_suffix("") for p in tsvs} == logs
    cmd = [sys.executable, str(REPO / "benchmarks" / "run_floor.py"), str(results), "--wall", "60"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    text = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    number = r"\s+([\d.]+)"
    rows = {
        m.group(1).strip(): [float(x) for x in m.groups()[1:]]
        for m in re.finditer(rf"^(\S+|\(tables, claims\)){number * 6}\s+(?:\d+%|-)$", text, re.M)
    }
    assert set(rows) == {"tiny-bert-testament", "tiny-llama-lm", "(tables, claims)", "total"}, text
    jobs, job_s, engine_jobs_s, train, evaluate, engine = rows.pop("total")
    assert jobs == len(tsvs)
    assert job_s == pytest.approx(sum(r[1] for r in rows.values()), abs=0.3)
    assert train > 0 and evaluate > 0 and engine == pytest.approx(train + evaluate, abs=0.2)
    reports = rows.pop("(tables, claims)")
    assert reports[0] >= 3 and reports[1] > 0 and reports[5] == 0  # table1, tables, claims
    for name, (_, its_job_s, its_engine_jobs_s, *_, its_engine) in rows.items():
        # Engines run inside the training and evaluation jobs; prepare etc. are the rest.
        assert 0 < its_engine <= its_engine_jobs_s < its_job_s, name
    floor = re.search(r"engine seconds / 2 = (\d+) s", text)
    assert floor and abs(int(floor.group(1)) - engine / 2) <= 1, text


def coalora_cli(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "coalora.cli", *map(str, args)],
        capture_output=True, text=True, env=ENV, cwd=cwd,
    )  # fmt: skip


@pytest.mark.slow
def test_a_finished_run_kept_as_the_reference_and_a_rerun_compared_with_it(ci_run, tmp_path):
    """`make reference`'s copy of a run holds what `coalora compare` and the README need; the
    run compared with it is bit-identical; a record that differs makes it statistical, a
    verdict that differs is named; `make compare-reference` reports a difference and
    succeeds; the README's blocks render from it."""
    from coalora.verdicts import compare, reference

    run = tmp_path / "results"
    shutil.copytree(ci_run / "results-ci", run)
    # What `make run` records (scripts/measure.py), here around a trivial command.
    measure = [sys.executable, str(REPO / "scripts" / "measure.py")]
    subprocess.run(
        [*measure, "--out", run / "logs" / "run.json", "--disk", run, "--", "true"],
        check=True,
        env=ENV,
        cwd=tmp_path,
    )
    kept = tmp_path / "reference"
    proc = coalora_cli("reference", run, "--out", kept)
    assert proc.returncode == 0, proc.stderr
    for name in ("claims.csv", "claims.md", "table1.csv", "table1.md", "MACHINE.json",
                 "MACHINE.md", "tables/paper.csv", "figures/tiny-llama-lm_pareto.png",
                 "benchmarks/claims.tsv"):  # fmt: skip
        assert (kept / name).is_file(), name
    assert compare.find_records(kept) == compare.find_records(run)
    curves = sorted(p.relative_to(run) for p in run.glob(compare.CURVE_GLOB))
    assert curves and sorted(p.relative_to(kept) for p in kept.glob(compare.CURVE_GLOB)) == curves
    assert not list(kept.rglob("checkpoint")) and not list(kept.rglob("*.safetensors"))
    # The planner works from the reference alone: its learning curves and job timings.
    proc = coalora_cli("plan", kept, "--steps", "1,2", "--max-seeds", "3", "--minutes", "60")
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.startswith("seeds x steps") and "how far each gated test moves" in proc.stdout
    )
    info = json.loads((kept / "MACHINE.json").read_text())
    assert info["measurement"]["command"] == "true" and info["machine"]["cpu"]
    prepared = json.loads((kept / "tiny-bert-testament" / "prepared.json").read_text())
    assert prepared["parameters"] > prepared["quantized_parameters"] > 0

    # The README's blocks: one row per claim of the paper, our scale beside the paper's.
    blocks = reference.rendered(kept)
    rows = [line for line in blocks["headline"].splitlines() if line.startswith("| C")]
    assert [r.split()[1] for r in rows] == [f"C{i}" for i in range(1, 9)]
    c1 = next(r for r in rows if r.startswith("| C1 "))
    assert "tiny-bert (bible-testament, NF)" in c1 and "| 6 | 2 |" in c1 and "RoBERTa-large" in c1
    assert "wall 0 min" in blocks["cost"] and "no GPU" in blocks["cost"]
    assert coalora_cli("headline", tmp_path / "nothing").returncode == 2

    # The run against its own copy: bit for bit, in one line.
    proc = coalora_cli("compare", kept, run, "--brief")
    assert proc.returncode == 0 and "bit for bit" in proc.stdout
    assert len(proc.stdout.splitlines()) == 1, proc.stdout
    # A record whose last bits differ: statistically, with the count.
    record = run / "tiny-llama-lm" / "coalora" / "s0" / "eval" / "b3.json"
    data = json.loads(record.read_text())
    data["metrics"]["perplexity"] *= 1 + 1e-12
    record.write_text(json.dumps(data))
    proc = coalora_cli("compare", kept, run, "--brief")
    assert proc.returncode == 0 and "statistically" in proc.stdout
    assert (
        f"{len(compare.find_records(run)) - 1} of {len(compare.find_records(run))}" in proc.stdout
    )
    # A verdict that differs: named, exit 1; make's comparison reports it and succeeds.
    claims = pd.read_csv(run / "claims.csv", dtype=str, keep_default_na=False)
    claims.loc[0, "verdict"] = "holds" if claims.loc[0, "verdict"] != "holds" else "contradicted"
    claims.to_csv(run / "claims.csv", index=False)
    proc = coalora_cli("compare", kept, run, "--brief")
    assert (
        proc.returncode == 1 and "differs" in proc.stdout and claims.loc[0, "test"] in proc.stdout
    )
    venv = Path(sys.executable).parent.parent
    make = ["make", "-s", "-C", REPO, "compare-reference", f"VENV={venv}", f"RESULTS={run}"]
    proc = subprocess.run([*make, f"REFERENCE={kept}"], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0 and "differs" in proc.stdout, proc.stdout + proc.stderr
    assert (run / "compare-reference.md").is_file()
    proc = subprocess.run([*make, f"REFERENCE={tmp_path / 'none'}"], capture_output=True, text=True)
    assert proc.returncode == 0 and "no reference run" in proc.stdout


@pytest.mark.slow
def test_the_html_report_of_a_finished_run(ci_run, tmp_path):
    """docs/usage.md: `snakemake --report report.html` after a run (figures and tables)."""
    html = tmp_path / "report.html"
    snakemake(ci_run, "--report", str(html), "--configfile", preset("ci.yaml"))
    assert html.stat().st_size > 10_000


def test_an_experiment_may_not_take_a_results_folder_name(tmp_path):
    conf = yaml.safe_load(Path(preset("ci.yaml")).read_text())
    conf["experiments"]["reference"] = conf["experiments"].pop("tiny-bert-testament")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(conf, sort_keys=False))
    proc = snakemake(tmp_path, "-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    message = "experiment 'reference': the name is taken by results-ci/reference/"
    assert message in proc.stdout + proc.stderr


@pytest.mark.slow
def test_seed_plan_of_the_ci_run_accounts_for_every_job(ci_run):
    """`coalora plan` on a real run: its costs add up to the run's benchmark files, the
    measured allocation replays at the measured wall time, and one seed decides nothing."""
    from coalora.verdicts import seedplan

    results = ci_run / "results-ci"
    planner, measured = seedplan.planner_from_run(results, cores=2, wall=60.0, replicates=50)
    assert measured == {"tiny-bert-testament": 2, "tiny-llama-lm": 1}
    total = 0.0
    for tsv in (results / "benchmarks").rglob("*.tsv"):
        with tsv.open() as handle:
            total += float(next(csv.DictReader(handle, delimiter="\t"))["s"])
    spent = sum(planner.costs[name].seconds(s) for name, s in measured.items())
    assert spent + planner.reports == pytest.approx(total)
    replay = planner.allocation(measured)
    assert replay.wall_seconds == pytest.approx(60.0)
    assert set(replay.chances) == {f"C{i}" for i in range(1, 9)}
    assert replay.chances["C8"] == 0  # causal LMs: only the one-seed tiny-llama experiment
    cmd = [sys.executable, "-m", "coalora", "plan", str(results), "--wall", "60",
           "--minutes", "5", "--max-seeds", "3"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    text = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    assert "as measured:" in text and "best within 5 min (seeds 2..3" in text, text


@pytest.mark.slow
@pytest.mark.parametrize("compute_dtype", ["auto", "bf16"])
def test_a_killed_run_started_again_finishes_with_the_same_tables(compute_dtype, request, tmp_path):
    """SIGKILL the whole run (Snakemake and its jobs) once the first evaluation is written,
    while other jobs are midway; no output it left may be half-written, and the run started
    again (--rerun-incomplete, as the profiles set) gives the uninterrupted run's tables.
    The first runs fork their jobs from a fork server, the restart runs each job cold: the
    same tables also say that the server changes no number. Once as the CI machine's
    `auto` decides, once in bf16 against an uninterrupted bf16 run (determinism and resume
    per dtype)."""
    ci_run = request.getfixturevalue("ci_run" if compute_dtype == "auto" else "ci_run_bf16")
    config = DTYPE_CONFIG[compute_dtype]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path)]
    args = ["--cores", "2", "--configfile", preset("ci.yaml")]
    first = [*args, "--config", *config] if config else args
    proc = subprocess.Popen(
        [*cmd, *first], cwd=tmp_path, env=ENV, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    results = tmp_path / "results-ci"
    deadline = time.monotonic() + 600
    try:
        while not list(results.glob("*/*/s*/eval/*.json")):
            assert proc.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline, "no evaluation written in 10 minutes"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (results / "table1.csv").exists()

    # Whatever a killed job left is either complete or not in place: every result parses
    # (the strict reader) and every checkpoint directory has its manifest.
    from coalora.evaluate.results import read_result

    for path in results.glob("*/*/s*/eval/*.json"):
        read_result(path)
    for ckpt in results.glob("**/checkpoint"):
        assert json.loads((ckpt / "manifest.json").read_text())["steps"] > 0

    # A hard kill leaves Snakemake's lock behind: --unlock, then run again; this time every
    # job in its own process (no fork server): the tables must not tell the two apart.
    server_log = results / "logs" / "fork_server.log"
    server_log.unlink()  # the killed run's
    snakemake(tmp_path, "--unlock", *args)
    snakemake(tmp_path, *args, "--rerun-incomplete", "--config", *config, "fork_server=False")
    assert not server_log.exists()
    if compute_dtype == "bf16":
        dtypes = {read_result(p)["protocol"]["dtype"] for p in results.glob("*/*/s*/eval/*.json")}
        assert dtypes == {"bfloat16"}, dtypes
    for table in ["table1.csv", *(f"tables/{t}.csv" for t in ("rank", "search", "seen_unseen"))]:
        assert read_table(results / table) == read_table(ci_run / "results-ci" / table), table
    # The claims too, but for the time ratios and the price of deciding (measured seconds
    # differ between runs).
    from coalora.verdicts.claims import SECONDS_COLUMNS

    claims = [
        [
            {k: v for k, v in row.items() if k not in SECONDS_COLUMNS}
            for row in read_table(r / "results-ci" / "claims.csv")
            if row["statistic"] != "time_ratio"
        ]
        for r in (tmp_path, ci_run)
    ]
    assert claims[0] == claims[1]
    assert not list(results.rglob("*.tmp"))


@pytest.mark.slow
def test_every_registered_method_runs_in_the_workflow(tmp_path):
    """One experiment with every registered method (config/all-methods.yaml): the workflow
    reads each method's traits from its class, so each trains in its rule and is evaluated
    where it serves; every one is a row of table1."""
    from coalora.evaluate.results import read_result
    from coalora.methods import method_traits

    conf = yaml.safe_load(Path(preset("all-methods.yaml")).read_text())
    [(exp, experiment)] = conf["experiments"].items()
    assert set(experiment["methods"]) == set(method_traits())  # no registered method left out
    snakemake(tmp_path, "--cores", "2", "--configfile", preset("all-methods.yaml"))
    results = tmp_path / conf["results"]
    rows = {r["method"]: r for r in csv.DictReader(open(results / "table1.csv"))}
    assert set(rows) == set(experiment["methods"]) | {"none"}
    steps = experiment["steps"]
    for method, row in rows.items():
        if method != "none":
            runs = {"any": 1, "shared": 1, "fixed": 1, "full-precision": 1}.get(
                method_traits()[method]["serves"], len(experiment["eval_budgets"])
            )
            # The paper's protocol: the same optimizer steps per run for every method.
            assert int(row["train_steps"]) == steps * runs, method
            assert float(row["train_seconds"]) > 0 and float(row["mean_metric"]) > 0, method

    def evaluations(method):
        return [read_result(p) for p in sorted((results / exp / method / "s0" / "eval").glob("*"))]

    # Full fine-tuning and LoRA on the unquantized base at full precision; QLoRA-bnb at its
    # one configuration (NF4, double quantization); per-configuration methods at each
    # evaluated budget; CoA-LoRA at each.
    for method in ("full-ft", "lora-fp"):
        [full] = evaluations(method)
        assert (full["config_name"], full["quantizer"], full["avg_bits"]) == (
            "full-precision",
            "none",
            32.0,
        ), method
        assert full["protocol"]["serves"] == "full-precision", method
        assert rows[method]["solutions"] == "1", method
    [bnb] = evaluations("qlora-bnb")
    assert bnb["config_name"] == "bnb-nf4-double-quant" and bnb["seen"] is True
    assert 4.0 < bnb["avg_bits"] < 4.2 and rows["qlora-bnb"]["solutions"] == "1"
    for method in ("qlora", "lqlora", "loftq", "gptq-lora"):
        records = evaluations(method)
        assert [r["config_name"] for r in records] == ["b3", "b4"], method
        assert all(r["seen"] and r["protocol"]["serves"] == "trained" for r in records), method
        assert rows[method]["solutions"] == "2", method
    # LQ-LoRA trains on its own allocation (the ILP over W - SVD_r(W)), the others on the
    # shared one.
    assert (results / exp / "qconfigs-lqlora" / "b3.json").is_file()
    assert rows["coalora"]["solutions"] == "any" and rows["shared-lora"]["solutions"] == "1"
