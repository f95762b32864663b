rule tables:
    input:
        evaluations=[f"{RESULTS}/runs/{e}/{v}/seed{s}/evaluation.json" for e, v, s in RUN_SETS],
        exports=[
            f"{RESULTS}/runs/{e}/{v}/seed{s}/export.json"
            for e, v, s in RUN_SETS
            if EXPORT and pipeline.quantized_stages(config, e, v)
        ],
    output:
        csv=[
            report(
                f"{TABLES}/{task}.csv",
                caption="../report/task_table.rst",
                category="Tables",
                labels={"table": task},
            )
            for task in TASKS
        ],
        markdown=expand(f"{TABLES}/{{task}}.md", task=TASKS),
        latex=expand(f"{TABLES}/{{task}}.tex", task=TASKS),
        runs=f"{TABLES}/runs.csv",
        seeds=[f"{TABLES}/seeds.csv", f"{TABLES}/seeds.md"],
        claims=report(
            f"{TABLES}/claims.csv",
            caption="../report/claims.rst",
            category="Tables",
            labels={"table": "claims"},
        ),
        claims_md=f"{TABLES}/claims.md",
        verdicts=[
            report(
                f"{TABLES}/verdicts.csv",
                caption="../report/verdicts.rst",
                category="Tables",
                labels={"table": "verdicts"},
            ),
            f"{TABLES}/verdicts.md",
        ],
        effects=[
            report(
                f"{TABLES}/effects.csv",
                caption="../report/effects.rst",
                category="Tables",
                labels={"table": "variant effects"},
            ),
            f"{TABLES}/effects.md",
        ],
        figure=report(
            f"{TABLES}/drop.png",
            caption="../report/drop.rst",
            category="Figures",
            labels={"figure": "drop"},
        ),
        figure_svg=f"{TABLES}/drop.svg",
        deployment=[
            report(
                f"{TABLES}/deployment.csv",
                caption="../report/deployment.rst",
                category="Tables",
                labels={"table": "deployment"},
            ),
            f"{TABLES}/deployment.md",
        ]
        if EXPORT
        else [],
    params:
        runs=lambda w, output: Path(output.runs).parents[1] / "runs",
        out=lambda w, output: Path(output.runs).parent,
        results=lambda w, output: Path(output.runs).parents[1],
    log:
        f"{RESULTS}/logs/tables.log",
    conda:
        ENV
    shell:
        "repq report tables --runs {params.runs} --out {params.out} > {log} 2>&1"
        + (" && repq tracking-sync {params.results} >> {log} 2>&1" if DEFERRED else "")
