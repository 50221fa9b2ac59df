from snowcloud.season import write_season
from snowcloud.workflow import logged

logged(
    snakemake.log[0],
    write_season,
    masks=list(snakemake.input.masks),
    table_path=snakemake.output.table,
    plot_path=snakemake.output.plot,
    options=snakemake.params.options,
    experiment=snakemake.wildcards.experiment,
    stats_path=snakemake.input.get("stats"),
    labelled=snakemake.params.labelled,
)
