# The repq workflow: mini data (or data checks), tracking store, FP training, QAT for
# every architecture, method and bit width (and every configured variant: the
# ablations), evaluation, ONNX export and its verification in onnxruntime, tables,
# figures and report.
#   snakemake --cores 2 --profile profiles/default                      (the embedded demo)
#   snakemake --configfile config/paper.yaml --profile profiles/slurm   (the paper)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.tables.output,
        expand(
            f"{RUN}/curve.png",
            zip,
            experiment=EXPERIMENTS,
            variant=VARIANT_OF,
            seed=SEEDS,
            stage=STAGES,
        ),
    default_target: True
