from snowcloud.evaluate import evaluate_scene
from snowcloud.workflow import logged

logged(
    snakemake.log[0],
    evaluate_scene,
    prediction=snakemake.input.prediction,
    label=snakemake.input.label,
    scene=snakemake.input.scene,
    output=snakemake.output[0],
    options=snakemake.params.options,
    threads=snakemake.threads,
    class_set=snakemake.params.class_set,
)
