if MINI:

    rule prepare_mini:
        output:
            manifest=f"{MINI_OUT}/manifest.json",
        params:
            out=parent,
            spec=pipeline.data_spec_args(MINI),
        log:
            f"{RESULTS}/logs/prepare_mini.log",
        conda:
            ENV
        shell:
            "repq prepare-data --mini --out {params.out} {params.spec} > {log} 2>&1"

else:

    if SYNTHETIC:

        rule prepare_synthetic:
            output:
                manifest=f"{SYNTHETIC_OUT}/manifest.json",
            params:
                out=parent,
                spec=pipeline.data_spec_args(SYNTHETIC),
            benchmark:
                f"{RESULTS}/benchmarks/prepare_synthetic/data.tsv"
            log:
                f"{RESULTS}/logs/prepare_synthetic.log",
            conda:
                ENV
            shell:
                "repq prepare-data --synthetic --out {params.out} {params.spec} > {log} 2>&1"

    rule check_data:
        input:
            f"{SYNTHETIC_OUT}/manifest.json" if SYNTHETIC else [],
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
