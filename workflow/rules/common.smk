# Names of things: experiments, methods, configurations, and the paths that spell them.
import shlex

RESULTS = config.get("results", "results")
SEED = config.get("seed", 0)
QUANTIZER = config.get("quantizer", "nf")
EXPERIMENTS = list(config["experiments"])
# The `coalora` command of the Python running Snakemake (works without activating the venv).
COALORA = f"{sys.executable} -m coalora.cli"

# Methods that train one run per configuration; the others train once and serve many.
PER_CONFIG = {"qlora", "lqlora", "loftq", "gptq-lora"}
# Methods whose ILP allocates over their own costs, into their own configuration files:
# LQ-LoRA's are the quantization errors of W - SVD_r(W) (see baselines/lqlora.py).
OWN_ALLOCATION = {"lqlora"}

wildcard_constraints:
    exp=r"[A-Za-z0-9_.-]+",
    method=r"[a-z0-9-]+",
    cfg=r"[bu][0-9.]+",


def exp_conf(exp):
    return config["experiments"][exp]


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
    trained; shared methods (and the unadapted base) also on the unseen ones."""
    if method in PER_CONFIG:
        return eval_cfgs(exp)
    return eval_cfgs(exp) + unseen_cfgs(exp)


def qconfig_dir(exp, method):
    if method in OWN_ALLOCATION:
        return f"{RESULTS}/{exp}/qconfigs-{method}"
    return f"{RESULTS}/{exp}/qconfigs"


def qconfig_path(exp, method, cfg):
    return f"{qconfig_dir(exp, method)}/{cfg}.json"


def lora_rank(exp):
    """The experiment's LoRA rank (its `train: {r: ...}`, else the engine's default)."""
    from coalora.train import TrainSettings

    return exp_conf(exp).get("train", {}).get("r", TrainSettings().r)


def cost_table_flags(exp):
    conf = exp_conf(exp)
    flags = [f"--max-elements {conf['max_elements']}"] if conf.get("max_elements") else []
    if conf.get("fisher"):
        flags.append(f"--fisher-task {conf['task']}")
    return " ".join(flags)


def checkpoint_path(exp, method, cfg=None):
    if method in PER_CONFIG:
        return f"{RESULTS}/{exp}/{method}/{cfg}/checkpoint"
    return f"{RESULTS}/{exp}/{method}/checkpoint"


def all_evaluations(exp):
    files = [f"{RESULTS}/{exp}/none/eval/{cfg}.json" for cfg in cfgs_for(exp, "none")]
    for method in exp_conf(exp)["methods"]:
        files += [f"{RESULTS}/{exp}/{method}/eval/{cfg}.json" for cfg in cfgs_for(exp, method)]
    return files


def train_flags(exp):
    """--set KEY=VALUE for each shared training setting, plus the seed."""
    settings = dict(exp_conf(exp).get("train", {}), seed=SEED)
    return " ".join(f"--set {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in sorted(settings.items()))


def data_flags(exp):
    conf = exp_conf(exp)
    flags = []
    if conf.get("max_train"):
        flags.append(f"--max-train {conf['max_train']}")
    return " ".join(flags)


def eval_flags(exp):
    conf = exp_conf(exp).get("eval", {})
    flags = []
    if conf.get("limit"):
        flags.append(f"--limit {conf['limit']}")
    if conf.get("window"):
        flags.append(f"--window {conf['window']}")
    if conf.get("lm_eval_tasks"):
        flags.append("--lm-eval-tasks " + " ".join(conf["lm_eval_tasks"]))
    return " ".join(flags)


def resources_for(exp, stage):
    return exp_conf(exp).get("resources", {}).get(stage, {})
