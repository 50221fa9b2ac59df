from snowcloud.quicklook import quicklook
from snowcloud.workflow import logged

logged(
    snakemake.log[0],
    quicklook,
    scene=snakemake.input.scene,
    prediction=snakemake.input.prediction,
    output=snakemake.output[0],
)
