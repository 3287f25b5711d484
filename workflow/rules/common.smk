# Names of things: experiments, methods, configurations, and the paths that spell them.
import shlex

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod

from coalora import forkserver
from coalora.data import rehearsal
from coalora.methods import method_traits
from coalora.offline import HUB_MIRROR_ENV
from coalora.train import TrainSettings, snapshot_name, snapshot_plan
from coalora.verdicts.reference import NAME as REFERENCE_NAME

# `--config rehearsal=true`: the preset end to end on a CPU at micro scale (coalora.data.rehearsal:
# its SCALE is every cut, printed here and recorded in every record). Its hub models, data
# sets and lm-eval data are stand-ins in their real formats, in a hub mirror that rule
# rehearsal_hub writes and every job reads through the code that reads the hub.
REHEARSAL = config.get("rehearsal") in (True, "true")
if REHEARSAL:
    config.update(rehearsal.scale_config(config))
    os.environ[HUB_MIRROR_ENV] = os.path.abspath(f"{config['results']}/rehearsal/hub")
    # Offline, and the stand-ins' datasets cache kept beside them, out of the user's.
    os.environ.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_DATASETS_CACHE=os.path.abspath(f"{config['results']}/rehearsal/datasets-cache"),
    )
    print(
        f"REHEARSAL (not results): {config['results']}/ at {json.dumps(rehearsal.SCALE.as_dict())}",
        file=sys.stderr,
    )

RESULTS = config.get("results", "results")
# Fractions of every run's steps at which it is snapshotted and evaluated (its learning curve;
# coalora.train.snapshot_plan): the same for every method, so one file name per snapshot.
SNAPSHOTS = sorted(set(config["snapshots"]))
CURVE_NAMES = [snapshot_name(f) for f in SNAPSHOTS]
SEEDS = config.get("seeds", [0])
QUANTIZER = config.get("quantizer", "nf")
EXPERIMENTS = list(config["experiments"])

# The `coalora` command, passed to every rule as `params.cli`. By default (`make install`'s
# venv) the Python running Snakemake (works without activating the venv); under
# `--software-deployment-method conda` the `python` of the rule's activated environment.
_deployment = workflow.deployment_settings
CONDA_DEPLOYMENT = (
    _deployment is not None and DeploymentMethod.CONDA in _deployment.deployment_method
)
if CONDA_DEPLOYMENT:
    COALORA = "python -m coalora.cli"
else:
    COALORA = f"{sys.executable} -m coalora.cli"

# Every rule's software (used only under `--software-deployment-method conda`); a conda path
# is relative to the file holding the directive, and every rule lives in workflow/rules/.
CONDA_ENV = "../envs/coalora.yaml"

# What each registered method is (coalora.methods: its class's traits, declared there once):
# which configurations it serves ("any", "shared", "trained", "fixed", "full-precision") and
# whether its ILP allocates over its own costs (LQ-LoRA).
METHOD_TRAITS = method_traits()
# The configuration label of the methods that serve one configuration they choose.
OWN_CONFIG_LABEL = {"fixed": "fixed", "full-precision": "full-precision"}

wildcard_constraints:
    exp=r"[A-Za-z0-9_.-]+",
    method=r"[a-z0-9-]+",
    cfg=r"[bu][0-9.]+|fixed|full-precision",
    seed=r"[0-9]+",


def rehearsal_hub(w=None):
    """A rehearsal's hub mirror, the input of every job that loads a model or a task (rule
    prepare, which every such job follows); nothing otherwise."""
    return [f"{RESULTS}/rehearsal/hub"] if REHEARSAL else []


def exp_conf(exp):
    return config["experiments"][exp]


def quantizer_of(exp):
    """The experiment's quantizer (its own `quantizer`, else the global one)."""
    return exp_conf(exp).get("quantizer", QUANTIZER)


def seeds_of(exp):
    """Training seeds of an experiment (its own `seeds`, else the global ones): every training
    and evaluation runs once per seed, under `s<seed>/` in its path."""
    return exp_conf(exp).get("seeds", SEEDS)


def artifact_seed(exp):
    """The seed of what all seeds share (cost tables, hence the ILP configurations): the
    experiment's first seed."""
    return seeds_of(exp)[0]


def _check_distinct_experiments():
    """Results are grouped by (model, task, quantizer) in the tables, so two experiments that
    share all three would merge silently; ablations of one experiment are its variants."""
    seen = {}
    for exp, conf in config["experiments"].items():
        key = (conf["model"], conf["task"], quantizer_of(exp))
        if key in seen:
            raise WorkflowError(
                f"experiments {seen[key]!r} and {exp!r} share model {key[0]!r}, task "
                f"{key[1]!r} and quantizer {key[2]!r}: their results would merge in the "
                f"tables; make one experiment and put the differences in its `variants:`"
            )
        seen[key] = exp


_check_distinct_experiments()

# Folders of results/ that are not experiments: an experiment of one of these names would
# write into them (reference: the kept reference run, coalora.verdicts.reference).
RESERVED_NAMES = (REFERENCE_NAME, "benchmarks", "logs", "figures", "tables")


def _check_reserved_names():
    for exp in EXPERIMENTS:
        if exp in RESERVED_NAMES:
            raise WorkflowError(
                f"experiment {exp!r}: the name is taken by {RESULTS}/{exp}/; "
                f"reserved: {', '.join(RESERVED_NAMES)}"
            )


_check_reserved_names()


def exp_methods(exp):
    """Method labels of an experiment: its methods, then its ablation variants."""
    return list(exp_conf(exp)["methods"]) + list(exp_conf(exp).get("variants", {}))


def base_method(exp, label):
    """The registered method behind a label (a variant's `method`, else the label)."""
    return exp_conf(exp).get("variants", {}).get(label, {}).get("method", label)


def _check_methods():
    for exp in EXPERIMENTS:
        for label in exp_methods(exp):
            if base_method(exp, label) not in METHOD_TRAITS:
                raise WorkflowError(
                    f"experiment {exp!r}: {label!r} names unknown method "
                    f"{base_method(exp, label)!r}; registered: {', '.join(METHOD_TRAITS)}"
                )


_check_methods()


def serves(exp, label):
    """Which configurations the label's trained model serves (its method's trait)."""
    return METHOD_TRAITS[base_method(exp, label)]["serves"]


def per_config(exp, label):
    """One run per evaluated configuration, trained and evaluated in one job."""
    return serves(exp, label) == "trained"


def own_config(exp, label):
    """One run per seed, evaluated in its training job under the one configuration the
    method chooses (QLoRA-bnb's NF4, full fine-tuning's full precision)."""
    return serves(exp, label) in OWN_CONFIG_LABEL


def shared(exp, label):
    """One run per seed serving every configuration (rule train + rule evaluate_<exp>)."""
    return not per_config(exp, label) and not own_config(exp, label)


def steps_for(exp, label):
    """Optimizer steps of one run: the variant's own, else the experiment's `steps` (one
    number for every method, the paper's protocol, or a per-method mapping)."""
    variant = exp_conf(exp).get("variants", {}).get(label, {})
    steps = exp_conf(exp)["steps"]
    if variant.get("steps"):
        return variant["steps"]
    if isinstance(steps, int):
        return steps
    method = base_method(exp, label)
    if method not in steps:
        raise WorkflowError(f"experiment {exp!r}: `steps` has no entry for method {method!r}")
    return steps[method]


def _check_snapshots():
    for exp in EXPERIMENTS:
        for label in exp_methods(exp):
            try:
                snapshot_plan(steps_for(exp, label), SNAPSHOTS)
            except ValueError as err:
                raise WorkflowError(f"experiment {exp!r}, {label!r}: {err}") from None


_check_snapshots()


def labels_where(kind):
    """Labels of any experiment for which ``kind(exp, label)`` holds (a rule's wildcard)."""
    return sorted({m for exp in EXPERIMENTS for m in exp_methods(exp) if kind(exp, m)})


def label_pattern(kind):
    labels = labels_where(kind)
    return "|".join(labels) if labels else "^$"


def budget_label(budget):
    return f"{float(budget):.3f}".rstrip("0").rstrip(".")


def eval_cfgs(exp):
    return [f"b{budget_label(b)}" for b in exp_conf(exp)["eval_budgets"]]


def unseen_cfgs(exp):
    return [f"u{budget_label(b)}" for b in exp_conf(exp).get("unseen_budgets", [])]


def all_cfgs(exp):
    return eval_cfgs(exp) + unseen_cfgs(exp)


def cfg_budget(cfg):
    return float(cfg[1:])


def cfgs_for(exp, method):
    """Configurations a method is evaluated on: per-configuration methods only where they
    trained; methods that choose their configuration on that one; shared methods (and the
    unadapted base) also on the unseen ones."""
    if method == "none":
        return eval_cfgs(exp) + unseen_cfgs(exp)
    if per_config(exp, method):
        return eval_cfgs(exp)
    if own_config(exp, method):
        return [OWN_CONFIG_LABEL[serves(exp, method)]]
    return eval_cfgs(exp) + unseen_cfgs(exp)


def own_allocation(exp, method):
    return method != "none" and METHOD_TRAITS[base_method(exp, method)]["own_allocation"]


def qconfig_dir(exp, method):
    """Where a method's configurations are; a method with its own allocation (LQ-LoRA, and
    its variants) uses its own files (allocated at the experiment's rank)."""
    if own_allocation(exp, method):
        return f"{RESULTS}/{exp}/qconfigs-{base_method(exp, method)}"
    return f"{RESULTS}/{exp}/qconfigs"


def qconfig_path(exp, method, cfg):
    return f"{qconfig_dir(exp, method)}/{cfg}.json"


def lora_rank(exp):
    """The experiment's LoRA rank (its `train: {r: ...}`, else the engine's default)."""
    return exp_conf(exp).get("train", {}).get("r", TrainSettings().r)


def cost_table_flags(exp):
    conf = exp_conf(exp)
    flags = [f"--max-elements {conf['max_elements']}"] if conf.get("max_elements") else []
    if conf.get("fisher"):
        flags.append(f"--fisher-task {conf['task']}")
    return " ".join(flags)


def eval_path(exp, method, seed, cfg):
    return f"{RESULTS}/{exp}/{method}/s{seed}/eval/{cfg}.json"


def curve_dir(exp, method, seed):
    """Where a run's snapshot records go: curve/<snapshot>/<cfg>.json beside eval/."""
    return f"{RESULTS}/{exp}/{method}/s{seed}/curve"


def curve_flag(exp, method, seed):
    return f"--snapshots-out {curve_dir(exp, method, seed)}" if CURVE_NAMES else ""


def all_curve_records(exp):
    """Every snapshot record of an experiment: each trained label's evaluations, at each
    snapshot (the unadapted base trains nothing)."""
    return [
        f"{curve_dir(exp, method, seed)}/{name}/{cfg}.json"
        for seed in seeds_of(exp)
        for method in exp_methods(exp)
        for cfg in cfgs_for(exp, method)
        for name in CURVE_NAMES
    ]


def labels_at(exp, seed):
    """Method labels evaluated at one seed: every label at every seed; the unadapted base
    `none` (a reference row that trains nothing and enters no claim) at the first seed only."""
    first = ["none"] if int(seed) == seeds_of(exp)[0] else []
    return first + exp_methods(exp)


def all_evaluations(exp):
    """Every evaluation of an experiment: each method label on each of its configurations,
    at each seed."""
    return [
        eval_path(exp, method, seed, cfg)
        for seed in seeds_of(exp)
        for method in labels_at(exp, seed)
        for cfg in cfgs_for(exp, method)
    ]


def train_flags(exp, label, seed):
    """--set KEY=VALUE for each training setting (the experiment's, then the variant's), plus
    the seed."""
    variant = exp_conf(exp).get("variants", {}).get(label, {})
    settings = dict(exp_conf(exp).get("train", {}), **variant.get("train", {}), seed=int(seed))
    if SNAPSHOTS:
        settings["snapshots"] = SNAPSHOTS
    dtype = settings.pop("compute_dtype", config["compute_dtype"])
    if dtype != "auto":  # auto is the CLI's default: the default's commands stay as they were
        settings["compute_dtype"] = dtype
    return " ".join(f"--set {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in sorted(settings.items()))


def data_flags(exp):
    conf = exp_conf(exp)
    flags = []
    if conf.get("max_train"):
        flags.append(f"--max-train {conf['max_train']}")
    return " ".join(flags)


def eval_flags(exp, seed):
    """`coalora evaluate` flags of an experiment's evaluations at one training seed."""
    conf = exp_conf(exp).get("eval", {})
    flags = []
    # Classifiers are evaluated at their training length (the bare base too).
    if exp_conf(exp).get("train", {}).get("max_length"):
        flags.append(f"--max-length {exp_conf(exp)['train']['max_length']}")
    if conf.get("batch_size"):
        flags.append(f"--batch-size {conf['batch_size']}")
    if conf.get("limit"):
        flags.append(f"--limit {conf['limit']}")
    if conf.get("window"):
        flags.append(f"--window {conf['window']}")
    if conf.get("lm_eval_limit"):
        flags.append(f"--lm-eval-limit {conf['lm_eval_limit']}")
    dtype = conf.get("compute_dtype", config["compute_dtype"])
    if dtype != "auto":
        flags.append(f"--compute-dtype {dtype}")
    if "lm_eval_tasks" in conf:  # [] runs none (the flag alone), not the default tasks
        tasks = conf["lm_eval_tasks"] if lm_eval_at(exp, seed) else []
        flags.append(" ".join(["--lm-eval-tasks", *tasks]))
    return " ".join(flags)


def lm_eval_at(exp, seed):
    """Whether the lm-eval tasks run at this seed: at the first `lm_eval_seeds` seeds."""
    first = exp_conf(exp).get("eval", {}).get("lm_eval_seeds")
    return first is None or int(seed) in seeds_of(exp)[:first]


def resources_for(exp, stage):
    return exp_conf(exp).get("resources", {}).get(stage, {})


def method_budget_flags(exp, label):
    conf = exp_conf(exp)
    method = base_method(exp, label)
    if method == "coalora" and conf.get("coalora_budgets"):
        return "--budgets " + ",".join(str(b) for b in conf["coalora_budgets"])
    if method == "shared-lora" and conf.get("shared_budgets"):
        return "--budgets " + ",".join(str(b) for b in conf["shared_budgets"])
    return ""


# The report rules' inputs (workflow/rules/report.smk) and the figures `rule all` asks for.


def every_evaluation(w=None):
    return [f for exp in EXPERIMENTS for f in all_evaluations(exp)]


def every_curve_record(w=None):
    return [f for exp in EXPERIMENTS for f in all_curve_records(exp)]


def search_variants(exp):
    """CoA-LoRA labels of an experiment whose search mode is set (the search ablation)."""
    return [
        m
        for m in exp_methods(exp)
        if serves(exp, m) == "any"
        and "search_mode" in exp_conf(exp).get("variants", {}).get(m, {}).get("train", {})
    ]


def figure_outputs():
    files = []
    for exp in EXPERIMENTS:
        kinds = ["pareto", "seen_unseen"] + (["search_ablation"] if search_variants(exp) else [])
        kinds += ["learning_curve"] if CURVE_NAMES else []
        files += [f"{RESULTS}/figures/{exp}_{k}.{ext}" for k in kinds for ext in ("png", "svg")]
    return files


# One process imports torch, transformers and peft once; every `coalora` job of a local run
# forks from it instead of importing them itself (7-9 s per job on a 2-core machine).
# coalora.forkserver explains when a job still starts cold; `--config fork_server=False`
# turns it off. Cluster jobs (SLURM) never use it: they run on their own nodes. A run of a
# few jobs (rerunning one job) starts none, since the server's own imports (10-20 s, while the
# first jobs start cold beside it) would cost more than they save.
FORK_SERVER_MIN_JOBS = 5
_fork_server = []


def start_fork_server():
    if (
        config.get("fork_server", True)
        and workflow.local_exec
        and not CONDA_DEPLOYMENT
        and len(workflow.dag) >= FORK_SERVER_MIN_JOBS
    ):
        _fork_server.append(forkserver.start(log=f"{RESULTS}/logs/fork_server.log"))


def stop_fork_server():
    for server in _fork_server:
        forkserver.stop(*server)
