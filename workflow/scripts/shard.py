from snowcloud.shards import build_shard
from snowcloud.workflow import logged

logged(
    snakemake.log[0],
    build_shard,
    scene=snakemake.input.scene,
    label=snakemake.input.label,
    output=snakemake.output[0],
    dataset=snakemake.wildcards.dataset,
    options=snakemake.params.options,
)
