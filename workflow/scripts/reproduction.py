from snowcloud.reproduction import write_reproduction
from snowcloud.workflow import logged

logged(
    snakemake.log[0],
    write_reproduction,
    model_path=snakemake.input.model,
    history_path=snakemake.input.history,
    stats_path=snakemake.input.stats,
    output=snakemake.output[0],
    experiment=snakemake.wildcards.experiment,
    options=snakemake.params.options,
    threads=snakemake.threads,
)
