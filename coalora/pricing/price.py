"""A configuration's jobs priced in GPU-hours and peak memory (``coalora price CONFIG``).

Training jobs cost their optimizer steps times the step's seconds (jobs that also evaluate
their one configuration, that evaluation too); evaluation jobs their configurations times
an evaluation's seconds; every figure comes from a cost table (``coalora.pricing.costs``)
with a basis saying how it was obtained. Set-up (loading, quantizing, a baseline's own
initialisation) is not priced. Jobs that ask no GPU in the config (data, cost tables, the
ILP, tables and figures) are counted, not priced.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .costs import DEFAULT_COSTS, CostRow, Priced, load_costs, look_up
from .jobs import Job, grid_jobs, validated
from .shapes import PAPER_SHAPES, block_parameters, shape_of

GPU_RULES = ("train", "train_per_config", "train_own_config", "evaluate", "evaluate_base")
# What `compute_dtype: auto` resolves to on a GPU that the costs price (coalora.precision:
# bf16 on a CUDA GPU with bf16 units, every NVIDIA GPU since Ampere).
AUTO_ON_GPU = "bf16"


@dataclasses.dataclass
class Line:
    """Jobs of one rule and method label in one experiment, alike in cost."""

    exp: str
    rule: str
    label: str
    jobs: int
    steps: int
    configs: int
    hours: float  # per job
    gpus: int  # per job: the config's `resources:` (a job asking none is priced on one)
    gpus_asked: int
    time: Priced  # its steps' seconds (training jobs), else an evaluation's
    memory: Priced

    @property
    def gpu_hours(self) -> float:
        return self.jobs * self.hours * self.gpus


def resolve_dtype(setting: str) -> str:
    return AUTO_ON_GPU if setting == "auto" else setting


def price_jobs(config: dict, rows, traits: dict) -> tuple[list[Line], list[Job]]:
    """(priced lines of the GPU jobs, the jobs left unpriced) of a validated ``config``."""
    from ..train import TrainSettings

    defaults = TrainSettings()
    lines: dict[tuple, Line] = {}
    unpriced = []
    for job in grid_jobs(config, traits):
        if job.rule not in GPU_RULES:
            unpriced.append(job)
            continue
        conf = config["experiments"][job.exp]
        shape = shape_of(conf["model"])
        if shape is None:
            raise ValueError(
                f"experiment {job.exp!r}: model {conf['model']!r} has no cost basis (a paper "
                f"shape: {', '.join(s['hub'] for s in PAPER_SHAPES.values())})"
            )
        global_dtype = config.get("compute_dtype", "auto")
        eval_dtype = resolve_dtype(conf.get("eval", {}).get("compute_dtype", global_dtype))
        where = dict(shape=shape, traits=traits)
        seconds = 0.0
        if job.steps:
            s = job.settings
            dtype = resolve_dtype(s.get("compute_dtype", global_dtype))
            step = look_up(
                rows, "step_seconds", method=job.method, dtype=dtype,
                batch_size=s.get("batch_size", defaults.batch_size),
                max_length=s.get("max_length", defaults.max_length),
                configs_per_step=s.get("configs_per_step", defaults.configs_per_step), **where,
            )  # fmt: skip
            seconds += job.steps * step.value
        else:
            dtype = eval_dtype
        evaluation = look_up(rows, "eval_seconds_per_config", method=job.label, dtype=eval_dtype, **where)  # fmt: skip
        memory = look_up(rows, "peak_memory_gib", method=job.label, dtype=dtype, **where)
        seconds += job.configs * evaluation.value
        key = (job.exp, job.rule, job.label)
        if key not in lines:
            lines[key] = Line(
                job.exp, job.rule, job.label, 0, job.steps, job.configs, seconds / 3600,
                max(job.gpus, 1), job.gpus, step if job.steps else evaluation, memory,
            )  # fmt: skip
        lines[key].jobs += job.count
    return list(lines.values()), unpriced


CAVEATS = (
    "not priced: set-up (loading, quantizing, a baseline's own initialisation) and jobs that "
    "ask no GPU",
    "an evaluation costs its measured seconds per configuration, on the few examples measured "
    "(eval [n] in the basis; a training job adds one): the full test sets' further passes are "
    "not in it, a lower bound",
    "peak memory is the measured run's peak scaled by block parameters; the job's activations "
    "(its batch) are not scaled in",
)


def render(config: dict, lines: list[Line], unpriced: list[Job], costs_path) -> str:
    """The printed price: per experiment a table by rule and label, then the total, the
    measurements every figure comes from (numbered) and what is not priced."""
    sources: list[CostRow] = []

    def basis(what: str, priced: Priced) -> str:
        if priced.row not in sources:
            sources.append(priced.row)
        return priced.basis(f"{what} [{sources.index(priced.row) + 1}]")

    out = [f"costs: {costs_path}; compute_dtype auto = {AUTO_ON_GPU} on the GPU priced"]
    header = (
        f"  {'rule':<17} {'method':<15} {'jobs':>4} {'steps/job':>9} {'configs':>7} "
        f"{'h/job':>7} {'GPUs':>4} {'GPU-h':>7} {'peak GiB':>8}  basis"
    )
    for exp, conf in config["experiments"].items():
        shape = shape_of(conf["model"])
        mine = [line for line in lines if line.exp == exp]
        out += [
            "",
            f"{exp}: {conf['model']} (shape {shape}, "
            f"{block_parameters(shape) / 1e6:,.0f} M block parameters)",
            header,
        ]
        for line in mine:
            steps = f"{line.steps:,}" if line.steps else "-"
            configs = line.configs or "-"
            what = "step" if line.steps else "eval"
            out.append(
                f"  {line.rule:<17} {line.label:<15} {line.jobs:>4} {steps:>9} "
                f"{configs:>7} {line.hours:>7.2f} {line.gpus:>4} {line.gpu_hours:>7.1f} "
                f"{line.memory.value:>8.1f}  {basis(what, line.time)}; {basis('mem', line.memory)}"
            )
        cpu: dict[str, int] = {}
        for job in unpriced:
            if job.exp == exp:
                cpu[job.rule] = cpu.get(job.rule, 0) + job.count
        out.append(
            f"  experiment: {sum(x.jobs for x in mine)} GPU jobs, "
            f"{sum(x.gpu_hours for x in mine):,.1f} GPU-hours, largest peak "
            f"{max(x.memory.value for x in mine):.1f} GiB; no GPU asked (not priced): "
            + ", ".join(f"{rule} {n}" for rule, n in cpu.items())
        )
    largest = max(lines, key=lambda x: x.memory.value)
    out += [
        "",
        f"total: {sum(x.jobs for x in lines) + sum(j.count for j in unpriced)} jobs, "
        f"{sum(x.jobs for x in lines)} on GPUs: {sum(x.gpu_hours for x in lines):,.1f} "
        f"GPU-hours; largest peak {largest.memory.value:.1f} GiB ({largest.exp}, "
        f"{largest.label}); {sum(j.count for j in unpriced)} jobs ask no GPU",
        "",
        "measured:",
        *[
            f"  [{k}] {row.shape} {row.method} {row.dtype}: {row.source()}"
            + (f" ({row.note})" if row.note else "")
            for k, row in enumerate(sources, 1)
        ],
        "basis: xN params / tokens / passes = scaled by block parameters / tokens per step / "
        "LoRA passes per step; 'as M' = method M's steps; 'A for B' = measured in dtype A",
        *CAVEATS,
    ]
    if any(line.gpus_asked == 0 for line in lines):
        out.append("training/evaluation jobs whose `resources:` ask no GPU are priced on one GPU")
    return "\n".join(out)


def price_from_cli(args) -> None:
    import yaml

    from ..methods import method_traits

    path = Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(f"no such config: {path}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not YAML ({str(err).splitlines()[0]})") from None
    config = validated(config, str(path))
    costs = Path(args.costs) if args.costs else DEFAULT_COSTS
    lines, unpriced = price_jobs(config, load_costs(costs), method_traits())
    shown = args.costs or f"{DEFAULT_COSTS.relative_to(DEFAULT_COSTS.parents[3])} (the default)"
    print(render(config, lines, unpriced, shown))
