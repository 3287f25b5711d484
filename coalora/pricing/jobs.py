"""The jobs the workflow's DAG runs for a configuration, by rule.

Derived from the config and the methods' traits exactly as workflow/rules/common.smk derives
the DAG's wildcards (tests/test_price.py compares every count with ``snakemake -n``): a
method serving any configuration or one shared adapter (``serves`` any / shared) trains once
per seed (rule ``train``) and is evaluated on every configuration, seen and unseen, in one
job (``evaluate_<exp>``); a method serving the configuration it trained on trains and
evaluates once per evaluation budget and seed (``train_per_config``); one that chooses its
configuration once per seed (``train_own_config``); the unadapted base is evaluated at the
first seed (``evaluate_base_<exp>``). Variants are labels of their method with their own
settings and steps.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

# Which configurations a trained model serves -> the rule that trains it.
TRAIN_RULE = {
    "any": "train",
    "shared": "train",
    "trained": "train_per_config",
    "fixed": "train_own_config",
    "full-precision": "train_own_config",
}
# Jobs of the whole run, whatever the experiments (report and the default target).
REPORT_RULES = ("table1", "tables", "claims", "all")
SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


@dataclasses.dataclass(frozen=True)
class Job:
    """One job of the DAG (or, with ``count``, that many alike)."""

    exp: str | None
    rule: str  # the rule, its experiment left out (evaluate, evaluate_base, allocate, allocate_own)
    label: str | None = None  # the method label (a variant's own), "none" for the bare base
    method: str | None = None  # the registered method behind the label
    seed: int | None = None
    steps: int = 0  # optimizer steps (training jobs)
    configs: int = 0  # configurations evaluated in the job
    settings: dict = dataclasses.field(default_factory=dict)  # training settings (train:)
    gpus: int = 0  # the experiment's `resources:` GPUs for the job's stage
    count: int = 1

    @property
    def dag_rule(self) -> str:
        """The rule's name in the DAG (rules made per experiment carry its name)."""
        if self.rule in ("evaluate", "evaluate_base", "allocate"):
            return f"{self.rule}_{self.exp}"
        if self.rule == "allocate_own":
            return f"allocate_{self.exp}_{self.method.replace('-', '_')}"
        return self.rule


def validated(config: dict, source: str = "config") -> dict:
    """``config`` checked against the workflow's schema (defaults filled in, as the
    Snakefile's ``validate`` does); an error names the key."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    if not SCHEMA.is_file():
        raise FileNotFoundError(f"the workflow's schema is not here: {SCHEMA} (a checkout's)")
    if not isinstance(config, dict):
        raise ValueError(f"{source}: not a mapping of settings")
    try:
        validate(config, str(SCHEMA))
    except WorkflowError as err:
        detail = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ValueError(
            f"{source} does not validate: {detail[1] if len(detail) > 1 else detail[0]}"
        ) from None
    return config


def grid_jobs(config: dict, traits: dict) -> list[Job]:
    """Every job of ``config`` (validated) with the methods' ``traits``
    (``coalora.methods.method_traits()``)."""
    jobs = [Job(None, rule) for rule in REPORT_RULES]
    for exp, conf in config["experiments"].items():
        jobs += experiment_jobs(exp, conf, config, traits)
    return jobs


def experiment_jobs(exp: str, conf: dict, config: dict, traits: dict) -> list[Job]:
    variants = conf.get("variants", {})
    labels = list(conf["methods"]) + list(variants)
    method_of = {label: variants.get(label, {}).get("method", label) for label in labels}
    for label, method in method_of.items():
        if method not in traits:
            raise ValueError(
                f"experiment {exp!r}: {label!r} names unknown method {method!r}; "
                f"registered: {', '.join(traits)}"
            )
    seeds = conf.get("seeds", config.get("seeds", [0]))
    # each trained run's evaluations are repeated at every snapshot (its learning curve)
    evaluated = 1 + len(set(config.get("snapshots", [])))
    seen = len(conf["eval_budgets"])
    every = seen + len(conf.get("unseen_budgets", []))
    gpus = {
        stage: int(conf.get("resources", {}).get(stage, {}).get("gpu", 0))
        for stage in ("train", "evaluate")
    }

    jobs = [Job(exp, "prepare"), Job(exp, "cost_table"), Job(exp, "allocate")]
    own = sorted({m for m in method_of.values() if traits[m]["own_allocation"]})
    if own:
        jobs.append(Job(exp, "cost_table_lowrank"))
    jobs += [Job(exp, "allocate_own", method=m) for m in own]  # LQ-LoRA's ILP
    for seed in seeds:
        for label, method in method_of.items():
            rule = TRAIN_RULE[traits[method]["serves"]]
            variant = variants.get(label, {})
            common = dict(
                label=label, method=method, seed=seed, steps=steps_of(exp, conf, label, method),
                settings={**conf.get("train", {}), **variant.get("train", {})},
                gpus=gpus["train"],
            )  # fmt: skip
            if rule == "train":
                jobs.append(Job(exp, rule, **common))
                jobs.append(Job(exp, "evaluate", label, method, seed, configs=every * evaluated, gpus=gpus["evaluate"]))  # fmt: skip
            elif rule == "train_per_config":
                jobs.append(Job(exp, rule, configs=evaluated, count=seen, **common))
            else:
                jobs.append(Job(exp, rule, configs=evaluated, **common))
        if seed == seeds[0]:  # the bare base: a reference row at the first seed only
            jobs.append(Job(exp, "evaluate_base", "none", seed=seed, configs=every, gpus=gpus["evaluate"]))  # fmt: skip
    searched = any(
        traits[method_of[label]]["serves"] == "any" and "search_mode" in v.get("train", {})
        for label, v in variants.items()
    )
    figures = ["pareto_figure", "seen_unseen_figure"] + (["search_ablation_figure"] * searched)
    figures += ["learning_curve_figure"] * (evaluated > 1)
    return jobs + [Job(exp, rule) for rule in figures]


def steps_of(exp: str, conf: dict, label: str, method: str) -> int:
    """A run's optimizer steps: the variant's own, else the experiment's (one number, or
    one per method)."""
    variant_steps = conf.get("variants", {}).get(label, {}).get("steps")
    if variant_steps:
        return variant_steps
    steps = conf["steps"]
    if isinstance(steps, int):
        return steps
    if method not in steps:
        raise ValueError(f"experiment {exp!r}: `steps` has no entry for method {method!r}")
    return steps[method]


def counts_by_rule(jobs: list[Job]) -> dict[str, int]:
    """Jobs per DAG rule name, as `snakemake -n` prints them in its 'Job stats'."""
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.dag_rule] = counts.get(job.dag_rule, 0) + job.count
    return counts
