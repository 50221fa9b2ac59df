from snowcloud.stac import build_catalogue
from snowcloud.workflow import logged

logged(
    snakemake.log[0],
    build_catalogue,
    masks=list(snakemake.input.masks),
    quicklooks=list(snakemake.input.quicklooks),
    folder=snakemake.output[0],
    experiment=snakemake.wildcards.experiment,
)
