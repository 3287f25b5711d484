# Tables and figures; they read only the evaluation JSONs.


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
        cli=COALORA,
        reference=config["reference_method"],
    benchmark:
        f"{RESULTS}/benchmarks/table1.tsv",
    log:
        f"{RESULTS}/logs/table1.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} report table1 --reference {params.reference} --out {output.csv} "
        "--markdown {output.md} {input} 2> {log}"


rule claims:
    """Verdicts on the paper's claims (coalora/verdicts/claims.yaml), with 95% intervals over seeds
    and test samples."""
    input:
        records=every_evaluation(),
        curves=every_curve_record(),
    output:
        csv=report(
            f"{RESULTS}/claims.csv",
            caption="../report/claims.rst",
            category="Claims",
        ),
        md=f"{RESULTS}/claims.md",
    params:
        cli=COALORA,
    benchmark:
        f"{RESULTS}/benchmarks/claims.tsv",
    log:
        f"{RESULTS}/logs/claims.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} report claims --out {output.csv} --markdown {output.md} {input.records} "
        "--curves {input.curves} 2> {log}"


rule learning_curve_figure:
    """The metric against optimizer steps (every snapshot and the end), per evaluated budget."""
    input:
        records=lambda w: all_evaluations(w.exp),
        curves=lambda w: all_curve_records(w.exp),
    output:
        png=report(
            f"{RESULTS}/figures/{{exp}}_learning_curve.png",
            caption="../report/learning_curve.rst",
            category="Figures",
        ),
        svg=f"{RESULTS}/figures/{{exp}}_learning_curve.svg",
    params:
        cli=COALORA,
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/figure-learning-curve.tsv",
    log:
        f"{RESULTS}/logs/{{exp}}/figure-learning-curve.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} report learning-curve --title {wildcards.exp} --out {output.png} "
        "--svg {output.svg} {input.records} --curves {input.curves} 2> {log}"


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
    params:
        cli=COALORA,
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/figure.tsv",
    log:
        f"{RESULTS}/logs/{{exp}}/figure.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} report pareto --title {wildcards.exp} --out {output.png} "
        "--svg {output.svg} {input} 2> {log}"


# The further tables (rank, search and quantizer ablations, seen vs unseen, the causal-LM
# table, the paper's relations beside ours). A table with nothing to show is written with
# its header only.
TABLES = ["rank", "search", "quantizer", "seen_unseen", "causal_lm", "paper"]


rule tables:
    input:
        records=every_evaluation(),
        curves=every_curve_record(),
    output:
        csv=[
            report(f"{RESULTS}/tables/{t}.csv", caption="../report/tables.rst", category="Tables")
            for t in TABLES
        ],
        md=[f"{RESULTS}/tables/{t}.md" for t in TABLES],
    params:
        cli=COALORA,
        reference=config["reference_method"],
        out_dir=lambda w, output: os.path.dirname(output.csv[0]),
    benchmark:
        f"{RESULTS}/benchmarks/tables.tsv",
    log:
        f"{RESULTS}/logs/tables.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} report tables --reference {params.reference} --out-dir {params.out_dir} "
        "{input.records} --curves {input.curves} 2> {log}"


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
    params:
        cli=COALORA,
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/figure-seen-unseen.tsv",
    log:
        f"{RESULTS}/logs/{{exp}}/figure-seen-unseen.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} report seen-unseen --title {wildcards.exp} --out {output.png} "
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
    params:
        cli=COALORA,
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/figure-search-ablation.tsv",
    log:
        f"{RESULTS}/logs/{{exp}}/figure-search-ablation.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} report search-ablation --title {wildcards.exp} --out {output.png} "
        "--svg {output.svg} {input} 2> {log}"
