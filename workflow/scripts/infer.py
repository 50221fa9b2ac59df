from snowcloud.infer import predict_scene
from snowcloud.workflow import logged

logged(
    snakemake.log[0],
    predict_scene,
    model_path=snakemake.input.model,
    scene=snakemake.input.scene,
    output=snakemake.output[0],
    options=snakemake.params.options,
    threads=snakemake.threads,
)
