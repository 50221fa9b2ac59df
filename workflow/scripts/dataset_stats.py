from snowcloud.dataset_stats import build_dataset_stats
from snowcloud.workflow import logged

logged(
    snakemake.log[0],
    build_dataset_stats,
    shards=list(snakemake.input.shards),
    stats_path=snakemake.output.stats,
    plot_path=snakemake.output.plot,
    dataset=snakemake.wildcards.dataset,
    options=snakemake.params.options,
)
