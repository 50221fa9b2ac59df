"""A full-size rehearsal of a season: K synthetic 10980 x 10980 dates of one tile through the local workflow with
the data settings of the thesis's final run (config/presets/a82e3cd.yaml), then projections to a season.

    nice -n 10 python benchmarks/bench_season.py [--dates 2] [--size 10980] [--patch-fraction 0.125]
        [--steps 2] [--batch 4] [--cores 2] [--inference] [--keep DIR]

Each stage is one `snakemake --cores N --until RULE` run under /usr/bin/time, so its wall time, CPU time (user +
system of Snakemake and its jobs) and peak RSS (the largest single process: a job, or Snakemake itself) are that
stage's own. The preset is changed only where a rehearsal must: the embedded demo makes the dates (demo paths),
`patches_per_date` is `--patch-fraction` of 8192 with `min_labelled_fraction` 0.95 (the demo's labels leave
some pixels unlabelled) (bytes and time of `shard` scale linearly with the patches:
the figures are projected to 8192), and the training runs `--steps` steps of `--batch` patches in one epoch
on the CPU (no compile; the preset's batch of 48 takes minutes per step on 2 cores, and neither its time nor its
CPU memory says anything about a GPU job, so the training's node-hours come from the measured GPU rate in
docs/training.md). Inference with the preset's 50 % overlap and TTA takes hours per tile on a CPU:
it runs only with --inference; otherwise its node-hours come from docs/inference.md's measured GPU time.
Prints the per-stage table, bytes per date and the projections for a thesis season (36 dates x 1 tile) and an
Alpine season (73 dates x 20 tiles): disk per stage, memory per job, node-hours per stage, Slurm submissions
(one per job, profiles/slurm) and status queries. docs/slurm.md ("What a season costs") has the figures.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.workflow_runs import DATES, REPO, TILE, snakemake_command, write_config  # noqa: E402

from snowcloud.config import merge_into  # noqa: E402

PRESET = REPO / "config" / "presets" / "a82e3cd.yaml"
EXPERIMENT = "a82e3cd"
DATASET = "thesis-dynamic-world"
THESIS_PATCHES = 8192
# Measured elsewhere, on one NVIDIA H200 (README.md): the thesis U-Net trains from real shards at 740 patches/s
# with 7 loader workers (docs/training.md), and a full tile gets its mask in 14.7 s (docs/inference.md, the
# default margin scheme with 4-way TTA; 37.8 s with the preset's 50 % overlap).
GPU_TRAIN_PATCHES_PER_S = 740.0
GPU_INFER_SECONDS_PER_TILE = 37.8
SEASONS = {"thesis season (36 dates x 1 tile)": (36, 1), "Alpine season (73 dates x 20 tiles)": (73, 20)}
# The per-date rules: one Slurm job each per date under profiles/slurm.
PER_DATE_JOBS = ("preprocess", "shard", "infer", "evaluate")
STATUS_INTERVAL_S = (10, 180)  # the profile's first status check after a submission, the plugin's longest gap


@dataclass
class Stage:
    rule: str
    wall: float
    cpu: float
    peak_rss: int  # bytes

    def row(self, dates: int) -> str:
        return (
            f"  {self.rule:14s} {self.wall:8.0f} s wall {self.cpu:8.0f} s CPU  peak RSS {self.peak_rss / 2**30:6.2f} GiB"
            f"  ({self.wall / dates:7.0f} s wall per date)"
        )


def rehearsal_config(args: argparse.Namespace) -> dict:
    config = yaml.safe_load(PRESET.read_text())
    defaults = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    patches = max(1, round(THESIS_PATCHES * args.patch_fraction))
    merge_into(
        config,
        {
            "raw_data": defaults["raw_data"],
            "dem": defaults["dem"],
            "labels": defaults["labels"],
            "demo": {"enabled": True, "tiles": [TILE], "dates": DATES[: args.dates], "size": args.size},
            # The demo's labels leave some pixels unlabelled (the thesis's hand-cleaned masks none): 95 %, not 100 %.
            "datasets": {DATASET: {"sampler": {"patches_per_date": patches, "min_labelled_fraction": 0.95}}},
            "experiments": {
                EXPERIMENT: {
                    "training": {
                        "epochs": 1,
                        "steps_per_epoch": args.steps,
                        "validation_steps": 1,
                        "batch_size": args.batch,
                        "compile": False,
                        "workers": max(1, args.cores - 1),
                        "device": "cpu",
                    }
                }
            },
        },
    )
    return config


def per_date_target(rule: str, date: str) -> str | None:
    """The output that makes `rule` run for one date alone, None for a rule that is not per date."""
    return {
        "preprocess": f"results/scenes/{TILE}/{date}.tif",
        "shard": f"results/shards/{DATASET}/{TILE}/{date}.h5",
        "infer": f"results/predictions/{EXPERIMENT}/{TILE}/{date}.tif",
    }.get(rule)


def timed_snakemake(workdir: Path, cores: int, *targets: str) -> Stage:
    """One Snakemake run under /usr/bin/time: wall, CPU and the peak RSS of its largest process."""
    command = ["/usr/bin/time", "-f", "TIME %e %U %S %M", *snakemake_command(workdir, "--cores", str(cores), *targets)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(targets)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    wall, user, system, peak_kib = re.findall(r"^TIME ([\d.]+) ([\d.]+) ([\d.]+) (\d+)$", done.stderr, re.M)[-1]
    return Stage(targets[-1], float(wall), float(user) + float(system), int(peak_kib) * 1024)


def run_stage(workdir: Path, rule: str, dates: list[str], cores: int) -> Stage:
    """A per-date rule one date after the other (each job alone on the cores, as on its own node); any other
    rule with `--until`. Wall and CPU are summed over the dates, the peak is the largest job's."""
    runs = [timed_snakemake(workdir, cores, target) for date in dates if (target := per_date_target(rule, date))]
    runs = runs or [timed_snakemake(workdir, cores, "--until", rule)]
    return Stage(rule, sum(r.wall for r in runs), sum(r.cpu for r in runs), max(r.peak_rss for r in runs))


def bytes_of(paths: list[Path]) -> int:
    return sum(path.stat().st_size for path in paths if path.is_file())


def state_bytes(model_path: Path) -> int:
    """The training's resume state, computed from the parameter count (it is removed once model.pt is written):
    the model and AdamW with amsgrad's three float32 tensors per parameter (exp_avg, exp_avg_sq, max_exp_avg_sq)."""
    from snowcloud.checkpoint import load_model

    model, _ = load_model(model_path)
    return sum(parameter.numel() for parameter in model.parameters()) * 4 * 4


def outputs_per_date(workdir: Path, dates: int) -> dict[str, float]:
    results = workdir / "results"
    model = results / "models" / EXPERIMENT / "model.pt"
    sizes = {
        "product (input)": bytes_of(list((workdir / "resources" / "demo" / "raw").rglob("*.zip"))) / dates,
        "scene": bytes_of(list((results / "scenes").rglob("*.tif"))) / dates,
        "shard (measured)": bytes_of(list((results / "shards").rglob("*.h5"))) / dates,
        "prediction": bytes_of(list((results / "predictions").rglob("*.tif"))) / dates,
        "quicklook": bytes_of(list((results / "quicklooks").rglob("*.png"))) / dates,
    }
    if model.exists():
        sizes["model (once)"] = model.stat().st_size
        sizes["state (once, computed)"] = state_bytes(model)
    return sizes


def print_projections(stages: dict[str, Stage], sizes: dict[str, float], args: argparse.Namespace) -> None:
    dates = args.dates
    shard_per_date = sizes["shard (measured)"] / args.patch_fraction
    per_date_disk = {"scene": sizes["scene"], "shard (8192 patches)": shard_per_date}
    if sizes["prediction"]:
        per_date_disk["prediction + quicklook"] = sizes["prediction"] + sizes["quicklook"]
    # Core-hours from CPU time, the steadier figure on a shared machine (a job alone on its cores takes about its
    # CPU time divided by the cores it keeps busy).
    cpu_hours_per_date = {
        rule: stages[rule].cpu / dates / 3600 for rule in ("demo_data", "preprocess") if rule in stages
    }
    if "shard" in stages:
        cpu_hours_per_date["shard (8192 patches)"] = stages["shard"].cpu / dates / args.patch_fraction / 3600
    train_gpu_hours = 60 * (4096 + 1024) * 48 / GPU_TRAIN_PATCHES_PER_S / 3600  # the preset's epochs x steps
    for name, (n_dates, tiles) in SEASONS.items():
        scenes = n_dates * tiles
        print(f"\n{name}: {scenes} scenes")
        for what, size in per_date_disk.items():
            print(f"  disk {what:24s} {size * scenes / 2**40:8.3f} TiB")
        for rule, hours in cpu_hours_per_date.items():
            print(f"  core-hours {rule:20s} {hours * scenes:8.1f} (CPU time measured here)")
        print(
            f"  GPU-hours train               {train_gpu_hours:8.1f} (a82e3cd's 60 x 5120 steps of 48 at "
            f"{GPU_TRAIN_PATCHES_PER_S:.0f} patches/s; independent of the dates)"
        )
        print(
            f"  GPU-hours infer               {GPU_INFER_SECONDS_PER_TILE * scenes / 3600:8.1f} "
            f"({GPU_INFER_SECONDS_PER_TILE} s per tile)"
        )
        jobs = len(PER_DATE_JOBS) * scenes + 1  # and train; the per-dataset rules run inside Snakemake
        print(f"  Slurm submissions             {jobs:8d} (one per job: {len(PER_DATE_JOBS)} per scene + train)")
        print(
            f"  status queries                one squeue/sacct call per {STATUS_INTERVAL_S[0]}-{STATUS_INTERVAL_S[1]} s "
            "for all jobs together, not per job"
        )
    print(
        "\nmemory per job (peak RSS measured here): "
        + ", ".join(f"{rule} {stage.peak_rss / 2**30:.2f} GiB" for rule, stage in stages.items())
    )


def rehearse(args: argparse.Namespace, workdir: Path) -> None:
    write_config(workdir, rehearsal_config(args))
    rules = ["demo_data", "preprocess", "shard", "dataset_stats", "train"]
    if args.inference:
        rules += ["infer", "evaluate"]
    patches = max(1, round(THESIS_PATCHES * args.patch_fraction))
    print(
        f"{args.dates} dates of {args.size} x {args.size}, {patches} patches of 256 per date "
        f"({args.patch_fraction:g} of 8192), {args.steps} training steps, --cores {args.cores}; work in {workdir}"
    )
    stages: dict[str, Stage] = {}
    for rule in rules:
        began = time.strftime("%H:%M:%S")
        stages[rule] = run_stage(workdir, rule, DATES[: args.dates], args.cores)
        print(f"{began} {stages[rule].row(args.dates).strip()}", flush=True)
    print("\nper stage:")
    for stage in stages.values():
        print(stage.row(args.dates))
    sizes = outputs_per_date(workdir, args.dates)
    print("\nbytes written per date:")
    for what, size in sizes.items():
        print(f"  {what:24s} {size / 2**20:10.1f} MiB")
    print(f"  shard at 8192 patches    {sizes['shard (measured)'] / args.patch_fraction / 2**20:10.1f} MiB (projected)")
    print_projections(stages, sizes, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dates", type=int, default=2, help=f"at most {len(DATES)}")
    parser.add_argument("--size", type=int, default=10980)
    parser.add_argument("--patch-fraction", type=float, default=0.125, help="of the preset's 8192 patches per date")
    parser.add_argument("--steps", type=int, default=2, help="training steps (one epoch)")
    parser.add_argument(
        "--batch", type=int, default=4, help="training batch (the preset's 48 takes minutes a step here)"
    )
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--inference", action="store_true", help="also run infer and evaluate (hours on a CPU)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    print(f"load before: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        rehearse(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-season-") as root:
            rehearse(args, Path(root))
    print(f"load after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
