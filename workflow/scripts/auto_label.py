from snowcloud.auto_labels import auto_label
from snowcloud.workflow import logged

logged(
    snakemake.log[0],
    auto_label,
    scene=snakemake.input.scene,
    output=snakemake.output[0],
    options=snakemake.params.options,
    threads=snakemake.threads,
)
