from snowcloud.demo import make_demo_data
from snowcloud.workflow import logged

logged(
    snakemake.log[0],
    make_demo_data,
    demo=snakemake.params.demo,
    raw_data=snakemake.params.raw_data,
    dem_pattern=snakemake.params.dem,
    labels_pattern=snakemake.params.labels,
    threads=snakemake.threads,
)
