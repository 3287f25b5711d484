# Tables and figures; they read only the evaluation JSONs.


def every_evaluation(w=None):
    return [f for exp in EXPERIMENTS for f in all_evaluations(exp)]


rule table1:
    input:
        every_evaluation(),
    output:
        csv=report(
            f"{RESULTS}/table1.csv",
            caption="../report/table1.rst",
            category="Tables",
        ),
        md=f"{RESULTS}/table1.md",
    params:
        reference=config.get("reference_method", "qlora"),
    log:
        f"{RESULTS}/logs/table1.log",
    shell:
        "{COALORA} report table1 --reference {params.reference} --out {output.csv} "
        "--markdown {output.md} {input} 2> {log}"


rule claims:
    """Verdicts on the paper's claims (coalora/claims.yaml), with 95% intervals over seeds
    and test samples."""
    input:
        every_evaluation(),
    output:
        csv=report(
            f"{RESULTS}/claims.csv",
            caption="../report/claims.rst",
            category="Claims",
        ),
        md=f"{RESULTS}/claims.md",
    log:
        f"{RESULTS}/logs/claims.log",
    shell:
        "{COALORA} report claims --out {output.csv} --markdown {output.md} {input} 2> {log}"


rule pareto_figure:
    input:
        lambda w: all_evaluations(w.exp),
    output:
        png=report(
            f"{RESULTS}/figures/{{exp}}_pareto.png",
            caption="../report/pareto.rst",
            category="Figures",
        ),
        svg=f"{RESULTS}/figures/{{exp}}_pareto.svg",
    log:
        f"{RESULTS}/logs/{{exp}}/figure.log",
    shell:
        "{COALORA} report pareto --title {wildcards.exp} --out {output.png} --svg {output.svg} "
        "{input} 2> {log}"


# The further tables (rank, search and quantizer ablations, seen vs unseen, the causal-LM
# table, the paper's relations beside ours). A table with nothing to show is written with
# its header only.
TABLES = ["rank", "search", "quantizer", "seen_unseen", "causal_lm", "paper"]


rule tables:
    input:
        every_evaluation(),
    output:
        csv=[
            report(f"{RESULTS}/tables/{t}.csv", caption="../report/tables.rst", category="Tables")
            for t in TABLES
        ],
        md=[f"{RESULTS}/tables/{t}.md" for t in TABLES],
    params:
        reference=config.get("reference_method", "qlora"),
        out_dir=f"{RESULTS}/tables",
    log:
        f"{RESULTS}/logs/tables.log",
    shell:
        "{COALORA} report tables --reference {params.reference} --out-dir {params.out_dir} "
        "{input} 2> {log}"


def search_variants(exp):
    """CoA-LoRA labels of an experiment whose search mode is set (the search ablation)."""
    return [
        m
        for m in exp_methods(exp)
        if base_method(exp, m) == "coalora"
        and "search_mode" in exp_conf(exp).get("variants", {}).get(m, {}).get("train", {})
    ]


def figure_outputs():
    files = []
    for exp in EXPERIMENTS:
        kinds = ["pareto", "seen_unseen"] + (["search_ablation"] if search_variants(exp) else [])
        files += [f"{RESULTS}/figures/{exp}_{k}.{ext}" for k in kinds for ext in ("png", "svg")]
    return files


rule seen_unseen_figure:
    input:
        lambda w: all_evaluations(w.exp),
    output:
        png=report(
            f"{RESULTS}/figures/{{exp}}_seen_unseen.png",
            caption="../report/seen_unseen.rst",
            category="Figures",
        ),
        svg=f"{RESULTS}/figures/{{exp}}_seen_unseen.svg",
    log:
        f"{RESULTS}/logs/{{exp}}/figure-seen-unseen.log",
    shell:
        "{COALORA} report seen-unseen --title {wildcards.exp} --out {output.png} "
        "--svg {output.svg} {input} 2> {log}"


rule search_ablation_figure:
    input:
        lambda w: all_evaluations(w.exp),
    output:
        png=report(
            f"{RESULTS}/figures/{{exp}}_search_ablation.png",
            caption="../report/search_ablation.rst",
            category="Figures",
        ),
        svg=f"{RESULTS}/figures/{{exp}}_search_ablation.svg",
    log:
        f"{RESULTS}/logs/{{exp}}/figure-search-ablation.log",
    shell:
        "{COALORA} report search-ablation --title {wildcards.exp} --out {output.png} "
        "--svg {output.svg} {input} 2> {log}"
