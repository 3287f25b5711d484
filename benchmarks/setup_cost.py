"""Set-up cost per workflow job type: process start to the first optimizer step / first
evaluation batch, and how much of it is imports and loading the model.

The target (issue "Fast enough to decide", item 1): at most 3 s of set-up per job beyond
loading the model weights.

Each job type runs once (``--repeat N``: N times, medians) in a scratch directory, in DAG
order, each producing the next one's inputs, as a subprocess with the CLI flags of its
workflow rule (built from the experiment as ``workflow/rules/common.smk`` builds them) and
the thread variables Snakemake sets for a one-thread rule. Only what comes after the first
step / batch is cut: at most ``--steps`` (2) steps and ``--limit`` (64) evaluation examples
(0: the experiment's own numbers; "total wall" then is the workflow's). Job types:

    prepare, cost-table, allocate, train (CoA-LoRA, shared), train_per_config (QLoRA:
    train --qconfig --evaluate-out), evaluate (--checkpoint --qconfigs), evaluate base
    (--model --qconfigs), report (table1)

Measured per job:

- start: ``time.time()`` just before ``Popen`` (interpreter start-up included);
- the marks of ``coalora.timing`` (``$COALORA_TIMING_FILE``): CLI entry, each model load,
  the first optimizer step, the first evaluation batch, CLI end;
- imports: ``python -X importtime``; the sum of the top-level (indent 0) cumulative times.
  stderr is read line by line as it comes, so each import is placed in time: imports that
  finish inside a model load are counted as imports, not as model load.

Columns: "to first" is start -> first step (train jobs) or first evaluation batch (evaluate
jobs); jobs with neither (prepare, cost-table, allocate, report; marked *) run to the CLI's
end, so their "set-up" includes all their work. "imports" and "model load" are the parts of
"to first" spent importing and in ``load_model`` (minus the imports inside it: the weights,
the tokenizer, building the model); "beyond load" = "to first" - "model load", the number
the target bounds.

    python benchmarks/setup_cost.py             # the default's first experiment (config.yaml)
    python benchmarks/setup_cost.py --quick     # tiny-bert and tiny-llama (config/ci.yaml)
    python benchmarks/setup_cost.py --model smollm2-135m --task bible-lm --experiment smollm2-bible
    python benchmarks/setup_cost.py --fork-server   # each job cold and [warm], side by side

"[warm]" rows: the same job forked from a ``coalora.forkserver`` (what the workflow's local
jobs do), started once before the first job; their "imports" column counts nothing (the
server imported before the job began; what the job still imports lazily is in "beyond").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from coalora import forkserver  # the standard library only: no torch in this process

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 3.0
TIMING_ENV = "COALORA_TIMING_FILE"  # coalora.timing.TIMING_ENV (not imported: no torch here)
SOCKET_ENV = forkserver.SOCKET_ENV
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
IMPORT_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|( *)(\S+)\s*$")


# ------------------------------------------------------------------ flags, as the rules


def budget_label(budget) -> str:
    return f"{float(budget):.3f}".rstrip("0").rstrip(".")


def train_flags(conf: dict, seed: int) -> list[str]:
    settings = dict(conf.get("train", {}), seed=int(seed))
    return [a for k, v in sorted(settings.items()) for a in ("--set", f"{k}={json.dumps(v)}")]


def data_flags(conf: dict) -> list[str]:
    return ["--max-train", str(conf["max_train"])] if conf.get("max_train") else []


def eval_flags(conf: dict) -> list[str]:
    ev, flags = conf.get("eval", {}), []
    if conf.get("train", {}).get("max_length"):
        flags += ["--max-length", str(conf["train"]["max_length"])]
    for key, flag in (("batch_size", "--batch-size"), ("limit", "--limit"), ("window", "--window")):
        if ev.get(key):
            flags += [flag, str(ev[key])]
    if "lm_eval_tasks" in ev:
        flags += ["--lm-eval-tasks", *ev["lm_eval_tasks"]]
    return flags


def cost_table_flags(conf: dict) -> list[str]:
    flags = ["--max-elements", str(conf["max_elements"])] if conf.get("max_elements") else []
    if conf.get("fisher"):
        flags += ["--fisher-task", conf["task"]]
    return flags


def jobs_for(conf: dict, quantizer: str, seed: int, work: Path) -> list[tuple[str, list[str]]]:
    """(job type, CLI arguments) in DAG order, the flags of each workflow rule."""
    model, task, steps = conf["model"], conf["task"], str(conf["steps"])
    cfgs = [f"b{budget_label(b)}" for b in conf["eval_budgets"]]
    cfgs += [f"u{budget_label(b)}" for b in conf.get("unseen_budgets", [])]
    budgets = [str(float(c[1:])) for c in cfgs]
    qdir, costs = work / "qconfigs", str(work / "cost_table.safetensors")
    qconfigs = [str(qdir / f"{c}.json") for c in cfgs]
    coa_budgets = ["--budgets", ",".join(map(str, conf["coalora_budgets"]))] * bool(
        conf.get("coalora_budgets")
    )
    coa_ckpt = str(work / "coalora" / f"s{seed}" / "checkpoint")
    qlora = work / "qlora" / f"s{seed}"
    tf, df, ef = train_flags(conf, seed), data_flags(conf), eval_flags(conf)
    return [
        ("prepare", ["prepare", "--model", model, "--task", task, "--out", str(work / "prepared.json")]),
        ("cost-table", ["cost-table", "--model", model, "--quantizer", quantizer,
                        *cost_table_flags(conf), "--seed", str(seed), "--out", costs]),
        ("allocate", ["allocate", "--model", model, "--budgets", *budgets, "--names", *cfgs,
                      "--quantizer", quantizer, "--cost-table", costs, "--out-dir", str(qdir)]),
        ("train", ["train", "--model", model, "--task", task, "--method", "coalora",
                   "--steps", steps, *coa_budgets, *tf, *df, "--quantizer", quantizer,
                   "--cost-table", costs, "--out", coa_ckpt]),
        ("train_per_config", ["train", "--model", model, "--task", task, "--method", "qlora",
                              "--steps", steps, "--qconfig", qconfigs[0], *tf, *df,
                              "--out", str(qlora / f"{cfgs[0]}" / "checkpoint"),
                              "--evaluate-out", str(qlora / "eval" / f"{cfgs[0]}.json"),
                              "--label", "qlora", *ef]),
        ("evaluate", ["evaluate", "--checkpoint", coa_ckpt, "--qconfigs", *qconfigs,
                      "--label", "coalora", *ef, "--out-dir", str(work / "coalora" / f"s{seed}" / "eval")]),
        ("evaluate base", ["evaluate", "--model", model, "--task", task, "--qconfigs", *qconfigs,
                           "--seed", str(seed), *ef, "--out-dir", str(work / "none" / f"s{seed}" / "eval")]),
        ("report", ["report", "table1", "--reference", "qlora", "--out", str(work / "table1.csv"),
                    "--markdown", str(work / "table1.md"),
                    *[str(work / "none" / f"s{seed}" / "eval" / f"{c}.json") for c in cfgs],
                    *[str(work / "coalora" / f"s{seed}" / "eval" / f"{c}.json") for c in cfgs],
                    str(qlora / "eval" / f"{cfgs[0]}.json")]),
    ]  # fmt: skip


# ------------------------------------------------------------------ one run of one job


@dataclass
class Run:
    job: str
    start: float
    end: float
    returncode: int
    marks: list[dict]
    imports: list[
        tuple[float, int, int, int, str]
    ]  # (arrival, self us, cumulative us, level, name)
    stderr: list[str] = field(default_factory=list)

    def first(self, event: str) -> float | None:
        return next((m["t"] for m in self.marks if m["event"] == event), None)

    def loads(self) -> list[tuple[float, float]]:
        starts = [m["t"] for m in self.marks if m["event"] == "model_load_start"]
        ends = [m["t"] for m in self.marks if m["event"] == "model_loaded"]
        return list(zip(starts, ends, strict=False))

    def import_seconds(self, lo: float, hi: float) -> float:
        """Seconds of top-level imports inside [lo, hi] (an import ends at its line's arrival
        and began its cumulative time before)."""
        total = 0.0
        for arrival, _, cumulative, level, _ in self.imports:
            if level == 0:
                begin = arrival - cumulative / 1e6
                total += max(0.0, min(arrival, hi) - max(begin, lo))
        return total

    def phase(self, begin: float, until: float) -> dict:
        """to-first, imports, model load (weights: minus imports inside) over [begin, until]."""
        load = 0.0
        for ls, le in self.loads():
            if ls >= begin and le <= until:
                load += (le - ls) - self.import_seconds(ls, le)
        return {
            "to_first": until - begin,
            "imports": self.import_seconds(begin, until),
            "model_load": load,
            "beyond": until - begin - load,
        }


def run_job(job: str, args: list[str], cwd: Path, threads: int, server: str | None = None) -> Run:
    """One job as a subprocess; with ``server`` (a fork server's socket) forked from it, as
    a workflow job is (no -X importtime then: the server imported before the job began)."""
    timing = Path(tempfile.mkstemp(prefix="timing.", suffix=".jsonl", dir=cwd)[1])
    env = dict(os.environ, **{TIMING_ENV: str(timing)}, **{v: str(threads) for v in THREAD_VARS})
    env.pop(SOCKET_ENV, None)
    if server:
        env[SOCKET_ENV] = server
    cmd = [sys.executable, *(["-X", "importtime"] * (server is None)), "-m", "coalora.cli", *args]
    stderr: list[tuple[float, str]] = []

    def read(stream, sink):
        for line in stream:
            sink.append((time.time(), line.rstrip("\n")))

    start = time.time()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    threads_ = [
        threading.Thread(target=read, args=(proc.stdout, []), daemon=True),
        threading.Thread(target=read, args=(proc.stderr, stderr), daemon=True),
    ]
    for t in threads_:
        t.start()
    returncode = proc.wait()
    end = time.time()
    for t in threads_:
        t.join()
    imports, other = [], []
    for arrival, line in stderr:
        m = IMPORT_LINE.match(line)
        if m:
            level = len(m.group(3)) // 2  # two spaces per nesting level
            imports.append((arrival, int(m.group(1)), int(m.group(2)), level, m.group(4)))
        elif not line.startswith("import time: self"):
            other.append(line)
    marks = [json.loads(x) for x in timing.read_text().splitlines() if x.strip()]
    timing.unlink()
    run = Run(job, start, end, returncode, marks, imports, other)
    if returncode != 0:
        tail = "\n".join(other[-15:])
        raise SystemExit(f"{job} failed ({returncode}):\n  {shlex.join(cmd)}\n{tail}")
    return run


def remove_outputs(cli: list[str]) -> None:
    for flag in ("--out", "--out-dir", "--evaluate-out"):
        if flag in cli:
            out = Path(cli[cli.index(flag) + 1])
            if out.is_dir():
                shutil.rmtree(out)
            else:
                out.unlink(missing_ok=True)


def _normalise_levels(imports):
    """-X importtime writes "| " + 2 spaces per nesting level before the name; make level 0
    the least indented (robust to the exact prefix)."""
    if not imports:
        return imports
    base = min(level for *_, level, _ in imports)
    return [(a, s, c, level - base, n) for a, s, c, level, n in imports]


def rows_of(run: Run) -> list[tuple[str, dict, float, bool]]:
    """(label, phase, total wall, whole job?) rows of one run."""
    run.imports = _normalise_levels(run.imports)
    wall = run.end - run.start
    first_step, first_eval = run.first("first_step"), run.first("first_eval_batch")
    if first_step is not None:
        rows = [(run.job, run.phase(run.start, first_step), wall, False)]
        if first_eval is not None:  # train --evaluate-out: the evaluation in the same process
            later = [ls for ls, _ in run.loads() if ls > first_step]
            if later:
                rows.append(
                    (f"  {run.job}: its eval", run.phase(later[0], first_eval), wall, False)
                )
        return rows
    if first_eval is not None:
        return [(run.job, run.phase(run.start, first_eval), wall, False)]
    end = run.first("cli_end") or run.end
    return [(run.job, run.phase(run.start, end), wall, True)]


# ------------------------------------------------------------------ imports by package


def top_packages(run: Run, n: int = 8) -> list[tuple[str, float, float, str]]:
    """(package, cumulative s, self s, first imported by) of the top-level packages, by the
    cumulative time of their outermost imports (what importing them cost this job, their own
    dependencies included when they were first to need them)."""
    imports = _normalise_levels(run.imports)
    parent: dict[int, int] = {}
    pending: dict[int, list[int]] = {}
    for i, (_, _, _, level, _) in enumerate(imports):  # post-order: children come first
        for child in pending.pop(level + 1, []):
            parent[child] = i
        pending.setdefault(level, []).append(i)

    def root(i):
        return imports[i][4].split(".")[0]

    def ancestors(i):
        while i in parent:
            i = parent[i]
            yield i

    cumulative: dict[str, float] = {}
    own: dict[str, float] = {}
    via: dict[str, str] = {}
    for i, (_, self_us, cum_us, _, _) in enumerate(imports):
        pkg = root(i)
        own[pkg] = own.get(pkg, 0.0) + self_us / 1e6
        up = list(ancestors(i))
        if any(root(a) == pkg for a in up):
            continue  # inside another import of the same package
        cumulative[pkg] = cumulative.get(pkg, 0.0) + cum_us / 1e6
        if pkg not in via:
            importer = next((imports[a][4] for a in up if root(a) == "coalora"), None)
            via[pkg] = importer or (imports[up[0]][4] if up else "(in a function: lazy)")
    ranked = sorted((p for p in cumulative if p != "coalora"), key=lambda p: -cumulative[p])
    return [(p, cumulative[p], own[p], via[p]) for p in ranked[:n]]


# ------------------------------------------------------------------ main


def load_experiment(config: Path, name: str | None) -> tuple[str, dict, str, int]:
    data = yaml.safe_load(config.read_text())
    exps = data["experiments"]
    name = name or next(iter(exps))
    conf = dict(exps[name])
    quantizer = conf.get("quantizer", data.get("quantizer", "nf"))
    seed = conf.get("seeds", data.get("seeds", [0]))[0]
    return name, conf, quantizer, seed


def fmt(x: float) -> str:
    return f"{x:7.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    p.add_argument("--experiment", help="experiment of --config (default: its first)")
    p.add_argument("--model", help="override the experiment's model")
    p.add_argument("--task", help="override the experiment's task")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny-bert and tiny-llama (config/ci.yaml's experiments) instead",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=2,
        help="training steps (default 2: set-up ends at the first; 0: the experiment's)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=64,
        help="cap on the evaluation's --limit (default 64: set-up ends at the first batch; "
        "0: the experiment's)",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per job type (medians)")
    p.add_argument("--threads", type=int, default=1, help="the rules' threads (default 1)")
    p.add_argument(
        "--fork-server",
        action="store_true",
        help="run each job twice, side by side: cold (its own imports) and warm (forked from "
        "a coalora.forkserver, as the workflow's local jobs are)",
    )
    p.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = p.parse_args()

    if args.quick:
        ci = ROOT / "config" / "ci.yaml"
        experiments = [load_experiment(ci, n) for n in ("tiny-bert-testament", "tiny-llama-lm")]
    else:
        experiments = [load_experiment(args.config, args.experiment)]
    for _, conf, _, _ in experiments:
        conf.update({k: v for k, v in (("model", args.model), ("task", args.task)) if v})
        # Work after the first step / batch only: the set-up measured is the same.
        if args.steps:
            conf["steps"] = min(conf["steps"], args.steps)
        ev = conf.setdefault("eval", {})
        if args.limit:
            ev["limit"] = min(ev.get("limit") or args.limit, args.limit)

    scratch = args.workdir or Path(tempfile.mkdtemp(prefix="setup-cost."))
    scratch.mkdir(parents=True, exist_ok=True)
    env_note = (
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, threads per job {args.threads}"
    )
    server = None
    if args.fork_server:
        server = forkserver.start(log=str(scratch / "fork_server.log"))
        while not os.path.exists(server[1]):
            if server[0].poll() is not None:
                raise SystemExit(f"the fork server failed: {scratch / 'fork_server.log'}")
            time.sleep(0.1)
    modes = [("", None)] + [(" [warm]", server[1])] * bool(server)
    try:
        for name, conf, quantizer, seed in experiments:
            work = scratch / name
            work.mkdir(parents=True, exist_ok=True)
            jobs = jobs_for(conf, quantizer, seed, work)
            print(f"\n== {name}: {conf['model']} on {conf['task']}, {conf['steps']} steps, "
                  f"eval limit {conf['eval']['limit']} ({env_note}; --repeat {args.repeat}) ==")  # fmt: skip
            results: dict[str, list] = {}
            order: list[str] = []
            train_runs = []
            for rep in range(args.repeat):
                for job, cli in jobs:
                    for suffix, socket_path in modes:
                        if rep == 0 and socket_path is None:
                            print(f"$ coalora {shlex.join(cli)}", file=sys.stderr)
                        else:  # a rerun starts from the same inputs, without this job's outputs
                            remove_outputs(cli)
                        # (cwd: not `work`, whose coalora/ output folder would shadow the editable package)
                        run = run_job(job, cli, scratch, args.threads, socket_path)
                        for line in run.stderr:
                            if "WARNING" in line or "Warning" in line:
                                print(f"  [{job}] {line}", file=sys.stderr)
                        if job == "train" and socket_path is None:
                            train_runs.append(run)
                        for label, phase, wall, whole in rows_of(run):
                            label += suffix
                            if label not in results:
                                order.append(label)
                            results.setdefault(label, []).append((phase, wall, whole))
            print_table(order, results)
            pkgs = top_packages(train_runs[-1])
            total = sum(c for _, _, c, level, _ in train_runs[-1].imports if level == 0) / 1e6
            print(f"\ntrain job: top imported packages (of {total:.2f} s of imports in all; "
                  "cumulative = outermost imports incl. what they pulled in first):")  # fmt: skip
            print(f"  {'package':16s} {'cumul. s':>8s} {'self s':>7s}  first imported by")
            for pkg, cum, own, via in pkgs:
                print(f"  {pkg:16s} {cum:8.2f} {own:7.2f}  {via}")
    finally:
        if server:
            forkserver.stop(*server)
        if not args.keep and args.workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
        elif args.keep:
            print(f"\nscratch kept: {scratch}")
    return 0


def print_table(order: list[str], results: dict[str, list]) -> None:
    head = (
        f"{'job type':30s} | {'to first':>8s} | {'imports':>7s} | {'model load':>10s} | "
        f"{'beyond load':>11s} | {'total wall':>10s}"
    )
    print(head)
    print("-" * len(head))
    meets, misses = [], []
    for label in order:
        runs = results[label]

        def med(key, runs=runs):
            return statistics.median(r[0][key] for r in runs)

        wall = statistics.median(r[1] for r in runs)
        whole = runs[0][2]
        name = label + (" *" if whole else "")
        beyond = med("beyond")
        print(
            f"{name:30s} | {fmt(med('to_first')):>8s} | {fmt(med('imports')):>7s} | "
            f"{fmt(med('model_load')):>10s} | {fmt(beyond):>11s} | {fmt(wall):>10s}"
        )
        (meets if beyond <= TARGET_S else misses).append(f"{label.strip()} ({beyond:.1f} s)")
    print(
        "(seconds; to first = process start -> first optimizer step (train) / first evaluation "
        "batch (evaluate); * no step or batch: to the CLI's end, all the job's work included; "
        "model load = load_model minus the imports inside it; beyond load = to first - model load)"
    )
    print(f"target: set-up beyond loading the model <= {TARGET_S:g} s per job")
    print(f"  meets:  {', '.join(meets) or 'none'}")
    print(f"  misses: {', '.join(misses) or 'none'}")


if __name__ == "__main__":
    sys.exit(main())
