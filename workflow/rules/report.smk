rule tables:
    input:
        expand(
            f"{RESULTS}/runs/{{experiment}}/seed{{seed}}/evaluation.json",
            experiment=config["experiments"],
            seed=config["seeds"],
        ),
        exports=expand(
            f"{RESULTS}/runs/{{experiment}}/seed{{seed}}/export.json",
            experiment=config["experiments"] if EXPORT else [],
            seed=config["seeds"],
        ),
    output:
        csv=[
            report(f"{TABLES}/{task}.csv", category="Tables", labels={"table": task})
            for task in TASKS
        ],
        markdown=expand(f"{TABLES}/{{task}}.md", task=TASKS),
        latex=expand(f"{TABLES}/{{task}}.tex", task=TASKS),
        runs=f"{TABLES}/runs.csv",
        claims=report(f"{TABLES}/claims.csv", category="Tables", labels={"table": "claims"}),
        claims_md=f"{TABLES}/claims.md",
        figure=report(f"{TABLES}/drop.png", category="Figures", labels={"figure": "drop"}),
        figure_svg=f"{TABLES}/drop.svg",
        deployment=[
            report(f"{TABLES}/deployment.csv", category="Tables", labels={"table": "deployment"}),
            f"{TABLES}/deployment.md",
        ]
        if EXPORT
        else [],
    params:
        runs=lambda w, input: Path(input[0]).parents[2],
        out=lambda w, output: Path(output.runs).parent,
        results=lambda w, output: Path(output.runs).parents[1],
    log:
        f"{RESULTS}/logs/tables.log",
    conda:
        ENV
    shell:
        "repq report tables --runs {params.runs} --out {params.out} > {log} 2>&1"
        + (" && repq tracking-sync {params.results} >> {log} 2>&1" if DEFERRED else "")
