"""The reference run: a finished run's outputs kept in ``results/reference/``, and the
README's headline rendered from them.

``coalora reference RESULTS --out results/reference`` (``make reference``) copies what a
reader and ``coalora compare`` need from a finished run: the claims, the tables, the figures,
every evaluation record (compare pairs them with a rerun's) and every snapshot record (the
learning curves, which ``coalora plan`` replays), each experiment's ``prepared.json`` (the
model's size) and Snakemake's job timings (``coalora plan``), and
writes ``MACHINE.json`` / ``MACHINE.md``: where, when and from which commit the run came, and
what it cost (``scripts/measure.py``'s record of ``make run``, when there is one).

``coalora headline results/reference`` prints the README's blocks: the headline (one row per
claim of the paper with its verdict, and the scale it was reached at: model, parameters,
optimizer steps per run, seeds, beside the paper's) and the cost (wall time, peak memory,
disk, and the machine). ``--readme README.md`` writes them between the README's markers,
``--check`` only says whether the README shows them (exit 1 if not).
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import pandas as pd

from ..io import atomic_dir, atomic_path, read_json
from .claimbook import load_claims
from .claims import CONTRADICTED, HOLDS, overall_verdict
from .compare import CLAIMS_FILE_NAME, CURVE_GLOB, find_records, run_files, run_provenance

NAME = "reference"  # results/reference/; no experiment may take this name (common.smk)
COPIED_FILES = (CLAIMS_FILE_NAME, "claims.md", "table1.csv", "table1.md")
COPIED_DIRS = ("tables", "figures", "benchmarks")
PREPARED = "prepared.json"  # results/<exp>/prepared.json: the model's size
MEASUREMENT = Path("logs", "run.json")  # scripts/measure.py's record of `make run`
MACHINE_JSON, MACHINE_MD = "MACHINE.json", "MACHINE.md"
# The README's blocks rendered from the reference run, each between its two markers.
BLOCKS = ("headline", "cost")
BEGIN = "<!-- {}: begin (rendered by `coalora headline results/reference`; do not edit) -->"
END = "<!-- {}: end -->"
GIB = 1024**3


# --------------------------------------------------------------------------- making one


def describe(results: Path, records: dict[str, dict]) -> dict:
    """Where, when and from which code the run came, and what it cost."""
    measured = results / MEASUREMENT
    measurement = read_json(measured, "run measurement") if measured.is_file() else None
    written = datetime.datetime.fromtimestamp(
        (results / CLAIMS_FILE_NAME).stat().st_mtime, datetime.UTC
    )
    provenance = run_provenance(records)
    machine = next((r["machine"] for r in records.values() if r.get("machine")), None)
    return {
        "code_version": provenance["code_version"],
        "claims_written_utc": written.isoformat(timespec="seconds"),
        "machine": machine,
        "compute_dtype": provenance["dtype"],
        "threads": provenance["threads"],
        "device": provenance["device"],
        "experiments": sorted({path.split("/")[0] for path in records}),
        "evaluation_records": len(records),
        "measurement": measurement,
    }


def measured_wall(results: str | Path) -> float | None:
    """The wall seconds of ``make run`` that wrote a results directory or reference (its
    ``logs/run.json``, or the reference's ``MACHINE.json``); None where it was not measured."""
    results = Path(results)
    if (results / MEASUREMENT).is_file():
        run = read_json(results / MEASUREMENT, "run measurement")
    elif (results / MACHINE_JSON).is_file():
        run = read_json(results / MACHINE_JSON, "reference description").get("measurement")
    else:
        run = None
    return float(run["wall_seconds"]) if run and run.get("exit_status") == 0 else None


def machine_markdown(info: dict) -> str:
    m, run = info["machine"] or {}, info["measurement"]
    lines = [
        "# The reference run",
        "",
        f"- code: `{info['code_version']}`",
        f"- claims written: {info['claims_written_utc']}",
        f"- machine: {m.get('cpu', 'not recorded')} ({m.get('arch', '?')}; instruction sets "
        f"{', '.join(m.get('isa', [])) or 'none of note'}; BLAS {m.get('blas', '?')}; GPU "
        f"{m.get('gpu') or 'none'})",
        f"- compute dtype {info['compute_dtype']}, threads per job {info['threads']}, "
        f"device {info['device']}",
        f"- {info['evaluation_records']} evaluation records: {', '.join(info['experiments'])}",
    ]
    if run:
        disk = ", ".join(f"{p} {b / GIB:.2f} GiB" for p, b in run["disk_bytes"].items())
        lines += [
            f"- `{run['command']}` started {run['started_utc']}: wall {_minutes(run)}, peak "
            f"memory {_memory(run)}, disk {disk}, cache {run['cache_bytes'] / GIB:.2f} GiB "
            f"({run['host_cpus']} CPUs seen; exit {run['exit_status']})",
        ]
    else:
        lines.append(f"- wall time, memory, disk: not measured (no {MEASUREMENT.as_posix()})")
    return "\n".join(lines) + "\n"


def make_reference(results: str | Path, out: str | Path) -> dict:
    """Copy a finished run into ``out`` (replaced as a whole, atomically)."""
    results, out = Path(results), Path(out)
    missing = [name for name in COPIED_FILES if not (results / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{results}: not a finished run (no {', '.join(missing)})")
    records = find_records(results)
    if not records:
        raise FileNotFoundError(f"{results}: no evaluation records")
    info = describe(results, records)
    with atomic_dir(out) as tmp:
        for name in COPIED_FILES:
            shutil.copy2(results / name, tmp / name)
        for name in COPIED_DIRS:
            if (results / name).is_dir():
                shutil.copytree(results / name, tmp / name)
        curves = [p.relative_to(results).as_posix() for p in run_files(results, CURVE_GLOB)]
        kept = [*records, *curves, *(f"{exp}/{PREPARED}" for exp in info["experiments"])]
        for relative in kept:
            source = results / relative
            if source.is_file():
                (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, tmp / relative)
        (tmp / MACHINE_JSON).write_text(json.dumps(info, indent=2) + "\n")
        (tmp / MACHINE_MD).write_text(machine_markdown(info))
    return info


# --------------------------------------------------------------------------- the headline


def _minutes(run: dict) -> str:
    minutes, seconds = divmod(round(run["wall_seconds"]), 60)
    return f"{minutes} min {seconds} s"


def _memory(run: dict) -> str:
    peak = run.get("peak_memory_bytes")
    return "not measured" if peak is None else f"{peak / GIB:.1f} GiB"


def _joined(values) -> str:
    return "/".join(str(v) for v in sorted(set(values))) or "-"


def _parameters(count: int | None) -> str:
    if count is None:
        return "n/a"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= size:
            return f"{count / size:.3g}{unit}"
    return str(count)


def group_scales(reference: Path, records: dict[str, dict]) -> dict[tuple, dict]:
    """(model, task, quantizer) -> the model's parameters, steps per run and seeds."""
    sizes = {}
    for path in reference.glob(f"*/{PREPARED}"):
        info = read_json(path, "prepared model")
        sizes[(info["model"], info["task"])] = info.get("parameters")
    scales: dict[tuple, dict] = {}
    for record in records.values():
        key = (record["model"], record["task"], record["quantizer"])
        scale = scales.setdefault(key, {"steps": set(), "seeds": set()})
        scale["parameters"] = sizes.get((record["model"], record["task"]))
        if record["train_steps"]:
            scale["steps"].add(record["train_steps"])
        scale["seeds"].add(record["seed"])
    return scales


def headline(reference: str | Path) -> str:
    """The README's headline block (Markdown) from a reference run."""
    reference = Path(reference)
    claims_path = reference / CLAIMS_FILE_NAME
    if not claims_path.is_file():
        raise FileNotFoundError(
            f"no reference run in {reference} (no {CLAIMS_FILE_NAME}): make one with "
            f"`make reference` after `make run`"
        )
    table = pd.read_csv(claims_path, keep_default_na=False)
    info = read_json(reference / MACHINE_JSON, "reference run description")
    records = find_records(reference)
    scales = group_scales(reference, records)
    book = load_claims()
    rows = [
        "| claim | verdict | our model | parameters | steps per run | seeds | paper's model "
        "| parameters | steps per run | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for claim in book.claims:
        mine = table[(table["claim"] == claim.id) & table["decides"].astype(str).eq("True")]
        groups = sorted(set(zip(mine["model"], mine["task"], mine["quantizer"], strict=True)))
        ours = [scales.get(g, {"steps": (), "seeds": (), "parameters": None}) for g in groups]
        paper = book.paper_scale_of(claim)
        verdict = overall_verdict(mine["verdict"].tolist())
        verdict = f"**{verdict}**" if verdict in (HOLDS, CONTRADICTED) else verdict
        rows.append(
            f"| {claim.id} {claim.claim} | {verdict} "
            f"| {'; '.join(f'{m} ({t}, {q.upper()})' for m, t, q in groups) or 'not run'} "
            f"| {'; '.join(_parameters(s['parameters']) for s in ours) or '-'} "
            f"| {'; '.join(_joined(s['steps']) for s in ours) or '-'} "
            f"| {'; '.join(str(len(s['seeds'])) for s in ours) or '-'} "
            f"| {paper['model']} | {paper['parameters']} | {paper['steps']} | {paper['seeds']} |"
        )
    m = info["machine"] or {}
    lines = [
        f"The reference run (`make run` at `{info['code_version']}`, claims written "
        f"{info['claims_written_utc']}, {m.get('cpu', 'an unrecorded machine')}, "
        f"{info['compute_dtype']}); every test with its 95% interval: "
        f"[results/reference/claims.md](results/reference/claims.md).",
        "",
        *rows,
    ]
    return "\n".join(lines) + "\n"


def cost(reference: str | Path) -> str:
    """What the reference run cost, and where (the README's quick start)."""
    info = read_json(Path(reference) / MACHINE_JSON, "reference run description")
    m, run = info["machine"] or {}, info["measurement"]
    where = (
        f"{m.get('cpu', 'an unrecorded CPU')} ({', '.join(m.get('isa', [])) or 'no AVX'}; "
        f"{'GPU ' + m['gpu'] if m.get('gpu') else 'no GPU'})"
    )
    if not run:
        return f"Measured on {where}: wall time, memory and disk not recorded.\n"
    disk = ", ".join(f"`{p}/` {b / GIB:.2f} GiB" for p, b in run["disk_bytes"].items())
    return (
        f"The reference run, measured by `make run` itself on {where}, {run['host_cpus']} "
        f"CPUs, started {run['started_utc']}, at `{info['code_version']}`: **wall "
        f"{_minutes(run)}**, **peak memory {_memory(run)}** (its processes' proportional set "
        f"size), **disk** {disk} and {run['cache_bytes'] / GIB:.2f} GiB of caches "
        f"(`$COALORA_CACHE`: models, cost tables).\n"
    )


def rendered(reference: str | Path) -> dict[str, str]:
    """Every README block from a reference run, by name."""
    return dict(zip(BLOCKS, (headline(reference), cost(reference)), strict=True))


def readme_with(readme_text: str, blocks: dict[str, str], readme: str = "README.md") -> str:
    """The README with each block between its markers."""
    for name, block in blocks.items():
        begin, end = BEGIN.format(name), END.format(name)
        if readme_text.count(begin) != 1 or readme_text.count(end) != 1:
            raise ValueError(f"{readme}: needs exactly one pair of markers {begin} ... {end}")
        head, rest = readme_text.split(begin)
        _, tail = rest.split(end)
        readme_text = f"{head}{begin}\n{block}{end}{tail}"
    return readme_text


def headline_from_cli(args) -> int:
    blocks = rendered(args.reference)
    if not args.readme:
        print("\n".join(blocks.values()), end="")
        return 0
    readme = Path(args.readme)
    current = readme.read_text()
    wanted = readme_with(current, blocks, args.readme)
    if args.check:
        if current != wanted:
            print(
                f"{readme}: its blocks differ from {args.reference}; update them with "
                f"`coalora headline {args.reference} --readme {readme}`"
            )
            return 1
        print(f"{readme}: its blocks are {args.reference}'s")
        return 0
    with atomic_path(readme, suffix=".md") as tmp:
        tmp.write_text(wanted)
    print(f"wrote {readme}'s {' and '.join(blocks)} from {args.reference}")
    return 0


def reference_from_cli(args) -> int:
    info = make_reference(args.results, args.out)
    print(
        f"wrote {args.out}: {info['evaluation_records']} evaluation records of "
        f"{', '.join(info['experiments'])} at {info['code_version']}"
    )
    return 0
