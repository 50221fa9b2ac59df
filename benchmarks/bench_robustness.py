"""How the demo model and the NDSI rule hold up when the input reflectance changes as real products do: per-band
gains of +-10 % and +-20 %, offsets, the sensor's blur, noise and haze, each applied to the validation scenes'
reflectance with `snowcloud.spectral` (the training augmentation's own functions), then predicted and evaluated by
the package (`infer.predict_with`, `evaluate.evaluate_scene`, NDSI rule on the same perturbed pixels).

    python benchmarks/bench_robustness.py                      # the demo run in this directory
    python benchmarks/bench_robustness.py --workdir DIR --quick
    python benchmarks/bench_robustness.py --model M.pt --scenes A.tif B.tif --labels LA.tif LB.tif

Prints, per perturbation, macro IoU and per-class IoU of the model and of the rule over all evaluated pixels of
the scenes, the model's loss against the unperturbed scenes, and the goals of issue 24: a loss of at most
GOAL_LOSS under the +-10 % gains, and the model ahead of the rule under every perturbation.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

from snowcloud import infer, scene
from snowcloud.bands import BANDS
from snowcloud.config import load_config, validated
from snowcloud.evaluate import evaluate_scene
from snowcloud.metrics import metrics_from_confusion
from snowcloud.spectral import Perturbation, perturb

GOAL_LOSS = 0.05
SEED = 24  # the signs of the per-band gains and offsets, and the noise


def signs(seed: int) -> np.ndarray:
    """+1 or -1 per band, fixed by the seed (half the bands brighter, half darker, in a random order)."""
    return np.random.default_rng(seed).permutation(np.resize([1.0, -1.0], len(BANDS)))


def perturbations(quick: bool) -> list[tuple[str, str, Perturbation]]:
    """(name, group, perturbation): group "10" are the +-10 % gains the goal is about."""
    per_band = signs(SEED)
    cases = [
        ("none", "", Perturbation()),
        ("gain x1.10, all bands", "10", Perturbation(gains=1.10)),
        ("gain x0.90, all bands", "10", Perturbation(gains=0.90)),
        ("gain +-10 % per band", "10", Perturbation(gains=(1 + 0.10 * per_band).tolist())),
        ("gain x1.20, all bands", "20", Perturbation(gains=1.20)),
        ("gain x0.80, all bands", "20", Perturbation(gains=0.80)),
        ("gain +-20 % per band", "20", Perturbation(gains=(1 + 0.20 * per_band).tolist())),
        ("offset +0.01", "", Perturbation(offsets=0.01)),
        ("offset -0.01", "", Perturbation(offsets=-0.01)),
        ("offset +-0.02 per band", "", Perturbation(offsets=(0.02 * signs(SEED + 1)).tolist())),
        ("blur sigma 1 px", "", Perturbation(blur_sigma=1.0)),
        ("blur sigma 2 px", "", Perturbation(blur_sigma=2.0)),
        ("noise 0.005", "", Perturbation(noise_std=0.005)),
        ("noise 0.01", "", Perturbation(noise_std=0.01)),
        ("haze 0.04 at 490 nm (exponent 1.3)", "", Perturbation(haze=0.04, haze_exponent=1.3)),
        ("haze 0.08 at 490 nm (exponent 1.3)", "", Perturbation(haze=0.08, haze_exponent=1.3)),
    ]
    return [case for case in cases if case[0] in ("none", "gain +-10 % per band")] if quick else cases


def write_perturbed(source: Path, target: Path, perturbation: Perturbation, seed: int) -> Path:
    """The scene raster `source` with its bands' reflectance perturbed (elevation and no-data as they were),
    written to `target` (a path .../{tile}/{date}.tif, as evaluation wants) with the source's tags."""
    with rasterio.open(source) as src:
        raw = src.read()
        profile, tags, descriptions = src.profile, src.tags(), src.descriptions
    valid = scene.valid_pixels(raw)
    n = len(BANDS)
    reflectance = raw[:n].astype(np.float32) / np.float32(scene.REFLECTANCE_SCALE)
    changed = perturb(reflectance, BANDS, perturbation, np.random.default_rng(seed), valid)
    values = raw.copy()
    scene.store_values(changed * np.float32(scene.REFLECTANCE_SCALE), values[:n])
    values[:, ~valid] = scene.NODATA
    target.parent.mkdir(parents=True, exist_ok=True)
    profile.update(driver="GTiff", tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(values)
        dst.update_tags(**tags)
        dst.descriptions = descriptions
    return target


def evaluated_confusions(
    model: infer.LoadedModel, pairs: list[tuple[Path, Path]], perturbation: Perturbation, config: dict, work: Path
) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """Classes, compared classes and the confusion matrices of the model and the rule summed over the scenes."""
    experiment = config["experiments"][config["experiment"]]
    dataset = config["datasets"][experiment["dataset"]]
    evaluation = config["evaluation"] | {"baselines": ["ndsi"]}
    inference = validated(experiment["inference"], "inference")
    totals: dict[str, np.ndarray] = {}
    for number, (source, label) in enumerate(pairs):
        tile, date = scene.identity(source)
        perturbed = write_perturbed(source, work / "scenes" / tile / f"{date}.tif", perturbation, SEED + number)
        mask, result = work / "masks" / f"{tile}_{date}.tif", work / "evaluation" / f"{tile}_{date}.json"
        mask.parent.mkdir(parents=True, exist_ok=True)
        infer.predict_with(model, perturbed, mask, inference)
        class_set = {key: dataset[key] for key in ("classes", "ignored_classes")}
        evaluate_scene(str(mask), str(label), str(perturbed), str(result), evaluation, class_set=class_set)
        evaluated = json.loads(result.read_text())
        for method, outcome in evaluated["methods"].items():
            totals[method] = totals.get(method, 0) + np.asarray(outcome["confusion"])
    return evaluated["classes"], evaluated["methods"]["model"]["compared"], totals


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(
    pairs: list[tuple[Path, Path]], model: infer.LoadedModel, config: dict, quick: bool
) -> list[tuple[str, str, dict, dict]]:
    """(name, group, model metrics, rule metrics) for each perturbation, printed as a Markdown table row by row."""
    rows = []
    for name, group, perturbation in perturbations(quick):
        with tempfile.TemporaryDirectory(prefix="bench_robustness-") as work:
            classes, compared, totals = evaluated_confusions(model, pairs, perturbation, config, Path(work))
        metrics = {method: metrics_from_confusion(totals[method], tuple(classes), tuple(compared)) for method in totals}
        if not rows:
            header = " / ".join(compared)
            print(
                f"| perturbation | model macro IoU | change | rule macro IoU | model IoU {header} | rule IoU {header} |"
            )
            print("|---|---|---|---|---|---|")
        loss = metrics["model"]["macro_iou"] - (rows[0][2]["macro_iou"] if rows else metrics["model"]["macro_iou"])
        per_class = {method: " / ".join(fmt(metrics[method]["iou"][c]) for c in compared) for method in metrics}
        print(
            f"| {name} | {fmt(metrics['model']['macro_iou'])} | {loss:+.3f} | {fmt(metrics['ndsi']['macro_iou'])} "
            f"| {per_class['model']} | {per_class['ndsi']} |",
            flush=True,
        )
        rows.append((name, group, metrics["model"], metrics["ndsi"]))
    return rows


def report_goals(rows: list[tuple[str, str, dict, dict]]) -> None:
    clean = rows[0][2]["macro_iou"]
    losses = [clean - model["macro_iou"] for _, group, model, _ in rows if group == "10"]
    margins = [(model["macro_iou"] - rule["macro_iou"], name) for name, _, model, rule in rows]
    worst_margin, where = min(margins)
    print(
        f"\ngoal 1, +-10 % gains: largest macro IoU loss {max(losses):.3f} (goal <= {GOAL_LOSS}): "
        f"{'met' if max(losses) <= GOAL_LOSS else 'NOT met'}"
    )
    print(
        f"goal 2, ahead of the NDSI rule under every perturbation: smallest lead {worst_margin:+.3f} ({where}): "
        f"{'met' if worst_margin > 0 else 'NOT met'}"
    )


def default_pairs(workdir: Path, config: dict) -> list[tuple[Path, Path]]:
    """(scene raster, label) of the validation dates of the experiment's dataset, every tile the run has."""
    dataset = config["datasets"][config["experiments"][config["experiment"]]["dataset"]]
    dates = dataset["split"].get("validation_dates") or []
    pairs = []
    for date in dates:
        for source in sorted((workdir / "results" / "scenes").glob(f"*/{date}.tif")):
            tile, _ = scene.identity(source)
            label = workdir / config["labels"].format(tile=tile, date=date)
            if label.exists():
                pairs.append((source, label))
    if not pairs:
        sys.exit(f"no scene raster with a label for the validation dates {dates} under {workdir / 'results/scenes'}")
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("."), help="a finished demo run (default: here)")
    parser.add_argument("--configfile", type=Path, nargs="*", default=[], help="the run's --configfile overrides")
    parser.add_argument("--experiment", default="demo", help="the experiment whose model and validation dates")
    parser.add_argument("--model", type=Path, help="checkpoint (default: WORKDIR/results/models/EXPERIMENT/model.pt)")
    parser.add_argument("--scenes", type=Path, nargs="+", help="scene rasters .../{tile}/{date}.tif")
    parser.add_argument("--labels", type=Path, nargs="+", help="their label masks, in the same order")
    parser.add_argument("--quick", action="store_true", help="only the unperturbed scenes and +-10 %% per band")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    config = load_config(args.workdir / "config" / "config.yaml", *args.configfile) | {"experiment": args.experiment}
    if (args.scenes is None) != (args.labels is None) or (args.scenes and len(args.scenes) != len(args.labels)):
        parser.error("give --scenes and --labels together, one label per scene")
    pairs = list(zip(args.scenes, args.labels)) if args.scenes else default_pairs(args.workdir, config)
    model_path = args.model or args.workdir / "results" / "models" / args.experiment / "model.pt"
    inference = validated(config["experiments"][args.experiment]["inference"], "inference")
    model = infer.load_for_inference(model_path, inference, args.threads)
    print(f"model {model_path}; scenes {', '.join(str(source) for source, _ in pairs)}\n")
    report_goals(table(pairs, model, config, args.quick))


if __name__ == "__main__":
    main()
