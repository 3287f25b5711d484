# coalora: the CoA-LoRA benchmark DAG.
#   snakemake --cores all results/claims.csv                     (embedded default: verdicts)
#   snakemake --cores all results/table1.csv                     (the main table only)
#   snakemake --cores all --configfile config/ci.yaml            (tiny models, minutes)
#   snakemake --profile profiles/slurm --configfile config/paper.yaml
# Every rule is a thin call of the `coalora` command; all logic lives in the package.
import json
import os
import sys

from snakemake.utils import min_version, validate

from coalora import forkserver

min_version("9.0")


# The embedded default, unless --configfile names a preset: a preset REPLACES it (Snakemake
# would otherwise merge the two, mixing their experiments). --config KEY=VALUE still updates.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        f"{RESULTS}/claims.csv",
        f"{RESULTS}/claims.md",
        f"{RESULTS}/table1.csv",
        f"{RESULTS}/table1.md",
        [f"{RESULTS}/tables/{t}.{ext}" for t in TABLES for ext in ("csv", "md")],
        figure_outputs(),


# One process imports torch, transformers and peft once; every `coalora` job of a local run
# forks from it instead of importing them itself (7-9 s per job on a 2-core machine).
# coalora.forkserver explains when a job still starts cold; `--config fork_server=False`
# turns it off. Cluster jobs (SLURM) never use it: they run on their own nodes.
_fork_server = []


# A run of a few jobs (a single-rule rerun) starts none: the server's own imports (10-20 s,
# while the first jobs start cold beside it) would cost more than they save.
FORK_SERVER_MIN_JOBS = 5


onstart:
    if (
        config.get("fork_server", True)
        and workflow.local_exec
        and not CONDA_DEPLOYMENT
        and len(workflow.dag) >= FORK_SERVER_MIN_JOBS
    ):
        _fork_server.append(forkserver.start(log=f"{RESULTS}/logs/fork_server.log"))


onsuccess:
    for server in _fork_server:
        forkserver.stop(*server)


onerror:
    for server in _fork_server:
        forkserver.stop(*server)
