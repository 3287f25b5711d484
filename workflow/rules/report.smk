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
