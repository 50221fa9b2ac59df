# Scene raster -> automatic label mask (s2cloudless clouds, NDSI snow, water, glacier), one job per date.


rule auto_label:
    input:
        unpack(auto_label_inputs),
    output:
        "results/auto_labels/{tile}/{date}.tif",
    log:
        "logs/auto_label/{tile}/{date}.log",
    conda:
        "../../envs/snowcloud.yaml"
    threads: 2
    params:
        options=config["auto_labels"],
    script:
        "../scripts/auto_label.py"
