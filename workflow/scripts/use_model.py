from snowcloud.checkpoint import install_model
from snowcloud.workflow import logged

logged(
    snakemake.log[0],
    install_model,
    source=snakemake.params.source,
    output=snakemake.output[0],
    sha256=snakemake.params.sha256,
)
