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


# The fork server (coalora.forkserver; workflow/rules/common.smk says when one starts).
onstart:
    start_fork_server()


onsuccess:
    stop_fork_server()


onerror:
    stop_fork_server()
