from snowcloud.preprocess import preprocess_scene
from snowcloud.workflow import logged

logged(
    snakemake.log[0],
    preprocess_scene,
    safe=snakemake.input.safe,
    dem=snakemake.input.get("dem"),
    output=snakemake.output[0],
    options=snakemake.params.options,
    threads=snakemake.threads,
)
