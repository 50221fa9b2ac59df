from snowcloud.evaluate import summarise
from snowcloud.workflow import logged

logged(
    snakemake.log[0],
    summarise,
    evaluations=list(snakemake.input.evaluations),
    stats_path=snakemake.input.get("stats"),
    summary_path=snakemake.output.summary,
    confusion_path=snakemake.output.confusion,
    page_path=snakemake.output.page,
    configuration=snakemake.params.configuration,
)
