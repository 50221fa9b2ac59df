from snowcloud.train import train_experiment
from snowcloud.workflow import logged

logged(
    snakemake.log[0],
    train_experiment,
    stats_path=snakemake.input.stats,
    model_path=snakemake.output.model,
    history_path=snakemake.output.history,
    curves_path=snakemake.output.curves,
    state_dir=snakemake.params.state_dir,
    experiment=snakemake.wildcards.experiment,
    options=snakemake.params.options,
    threads=snakemake.threads,
)
