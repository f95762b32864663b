rule tables:
    input:
        expand(f"{RUN}/eval.json", zip, experiment=EXPERIMENTS, stage=STAGES),
    output:
        classification=report(
            f"{TABLES}/classification.csv", category="Tables", labels={"table": "classification"}
        ),
        superres=report(
            f"{TABLES}/superres.csv", category="Tables", labels={"table": "super-resolution"}
        ),
        markdown=[f"{TABLES}/classification.md", f"{TABLES}/superres.md"],
        latex=[f"{TABLES}/classification.tex", f"{TABLES}/superres.tex"],
        figure=report(f"{TABLES}/drop.png", category="Figures", labels={"figure": "drop"}),
        figure_svg=f"{TABLES}/drop.svg",
    params:
        recipe=config["experiments"][EXPERIMENTS[0]]["recipe"],
        overrides=pipeline.tracking_args(config),
        runs=lambda w, input: Path(input[0]).parents[2],
        out=parent,
    log:
        f"{RESULTS}/logs/tables.log",
    conda:
        ENV
    shell:
        "repq report tables {params.recipe} --runs {params.runs} --out {params.out} "
        "{params.overrides} > {log} 2>&1"
