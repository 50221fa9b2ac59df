from snowcloud.predict import predict_scene_and_quicklook
from snowcloud.workflow import logged

logged(
    snakemake.log[0],
    predict_scene_and_quicklook,
    model_path=snakemake.input.model,
    scene=snakemake.input.scene,
    output=snakemake.output.prediction,
    quicklook_path=snakemake.output.quicklook,
    options=snakemake.params.options,
    threads=snakemake.threads,
)
