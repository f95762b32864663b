if MINI:

    rule prepare_mini:
        output:
            manifest=f"{MINI_OUT}/manifest.json",
        params:
            out=parent,
            spec=pipeline.mini_args(MINI),
        log:
            f"{RESULTS}/logs/prepare_mini.log",
        conda:
            ENV
        shell:
            "repq prepare-data --mini --out {params.out} {params.spec} > {log} 2>&1"

else:

    rule check_data:
        output:
            touch(f"{RESULTS}/data/{{experiment}}/{{variant}}.checked"),
        params:
            recipe=recipe,
            overrides=set_args,
        log:
            f"{RESULTS}/logs/check_data/{{experiment}}/{{variant}}.log",
        conda:
            ENV
        shell:
            "repq prepare-data --check {params.recipe} {params.overrides} > {log} 2>&1"


rule tracking_init:
    output:
        f"{RESULTS}/tracking.ready",
    params:
        artifacts=pipeline.artifacts_arg(config),
    log:
        f"{RESULTS}/logs/tracking_init.log",
    conda:
        ENV
    shell:
        "repq tracking-init {params.artifacts} --marker {output} > {log} 2>&1"
