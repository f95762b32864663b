rule tables:
    input:
        expand(f"{RESULTS}/runs/{{experiment}}/evaluation.json", experiment=config["experiments"]),
    output:
        csv=[
            report(f"{TABLES}/{task}.csv", category="Tables", labels={"table": task})
            for task in TASKS
        ],
        markdown=expand(f"{TABLES}/{{task}}.md", task=TASKS),
        latex=expand(f"{TABLES}/{{task}}.tex", task=TASKS),
        figure=report(f"{TABLES}/drop.png", category="Figures", labels={"figure": "drop"}),
        figure_svg=f"{TABLES}/drop.svg",
    params:
        runs=lambda w, input: Path(input[0]).parents[1],
        out=parent,
    log:
        f"{RESULTS}/logs/tables.log",
    conda:
        ENV
    shell:
        "repq report tables --runs {params.runs} --out {params.out} > {log} 2>&1"
