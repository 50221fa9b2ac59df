"""The `snowcloud` command: make demo data, check a configuration, describe a file the workflow made, predict
masks for new products with a model, import a thesis checkpoint.

The workflow itself runs with `snakemake`; this command is for what a user does beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import yaml

from snowcloud import __version__
from snowcloud.config import (
    ConfigError,
    datasets_of,
    experiments_to_run,
    load_config,
    load_schema,
    model_file,
    options_for_model,
    validate_config,
)
from snowcloud.labels import recorded_classes


class CommandError(ValueError):
    """A command line that names something the command cannot use; the message names it."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, ValueError, OSError) as error:
        if not _named_error(error):
            traceback.print_exc()
        print(f"snowcloud {args.command}: {error}", file=sys.stderr)
        return 1


def _named_error(error: BaseException) -> bool:
    """One of the project's own errors (whose message names the file or key) or an I/O error; any other error
    (a ValueError numpy raises, say) is a bug, shown with its traceback."""
    return isinstance(error, OSError) or type(error).__module__.split(".")[0] == "snowcloud"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snowcloud",
        description="Helpers beside the snowcloud Snakemake workflow (run the workflow itself with `snakemake`).",
        epilog="Examples:\n"
        "  snowcloud demo /tmp/fulltile --size 10980 --tiles 32TNS --dates 20220201T102209\n"
        "  snowcloud check-config config/config.yaml config/presets/a82e3cd.yaml\n"
        "  snowcloud info results/models/demo/model.pt\n"
        "  snowcloud predict results/models/demo/model.pt downloads/ --dem dem/T{tile}.tif --out masks\n"
        "  snowcloud import-thesis unet_a82e3cd_ep30.pth --preset a82e3cd --out a82e3cd.pt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"snowcloud {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo_defaults = load_schema()["properties"]["demo"]["properties"]
    demo = commands.add_parser(
        "demo",
        help="make synthetic Sentinel-2 L1C products, DEMs and label masks",
        description="Make the demo data outside the workflow, e.g. a full-size 10980 x 10980 tile for benchmarks: "
        "OUT/raw/T{tile}/*.SAFE.zip, OUT/dem/T{tile}.tif, OUT/labels/T{tile}/{date}.tif.",
    )
    demo.add_argument("out", type=Path, help="folder to write into")
    demo.add_argument(
        "--size", type=int, default=demo_defaults["size"]["default"], help="pixels per side (multiple of 6)"
    )
    demo.add_argument("--tiles", nargs="+", default=demo_defaults["tiles"]["default"], help="tile ids, e.g. 32TNS")
    demo.add_argument("--dates", nargs="+", default=demo_defaults["dates"]["default"], help="sensing times")
    demo.add_argument("--seed", type=int, default=demo_defaults["seed"]["default"])
    demo.add_argument(
        "--scale",
        choices=demo_defaults["scale"]["enum"],
        default=demo_defaults["scale"]["default"],
        help="real: windows of a real-size tile at 10 m; model: the whole tile drawn at --size (docs/demo.md)",
    )
    demo.add_argument("--threads", type=int, default=1, help="scenes made in parallel")
    demo.set_defaults(run=_demo)

    check = commands.add_parser(
        "check-config",
        help="validate configuration files the way the workflow will",
        description="Merge the files in order (later ones win key by key, like --configfile), validate them "
        "against src/snowcloud/schema.yaml and say what the workflow would build.",
    )
    check.add_argument("files", nargs="*", type=Path, default=[Path("config/config.yaml")])
    check.add_argument("--show", action="store_true", help="print the merged configuration with every default")
    check.set_defaults(run=_check_config)

    info = commands.add_parser(
        "info",
        help="describe a product, scene raster, label mask, shard, stats.json or model.pt",
        description="Print what a file holds: its grid and bands, normalisation, class distribution, "
        "training provenance and metrics.",
    )
    info.add_argument("path", type=Path)
    info.set_defaults(run=_info)

    predict = commands.add_parser(
        "predict",
        help="masks for products (or scene rasters) from a model.pt, without the workflow",
        description="Preprocess each input as the model's training scenes were, predict it with the model's bands "
        "and normalisation and write OUT/{tile}/{date}.tif (a COG with a colour table; optionally "
        "{date}_proba.tif and {date}.png). An input that fails is reported by name, the others go on; the exit "
        "status is 1 if any failed.",
    )
    predict.add_argument("model", type=Path, help="model.pt (trained by the workflow or made by import-thesis)")
    predict.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="a .SAFE.zip, a .SAFE folder, a folder holding products, or a scene raster (.tif) the workflow made",
    )
    predict.add_argument("--out", type=Path, required=True, help="output folder")
    predict.add_argument("--dem", help="DEM GeoTIFF, or a pattern with {tile}; needed when the model reads elevation")
    predict.add_argument(
        "--tta", action=argparse.BooleanOptionalAction, default=None, help="flip test-time augmentation (default: on)"
    )
    predict.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="default: auto")
    predict.add_argument("--batch-size", type=int, default=None, help="windows per forward pass (default: 16)")
    predict.add_argument("--probabilities", action="store_true", help="also write {date}_proba.tif")
    predict.add_argument("--quicklook", action="store_true", help="also write {date}.png")
    predict.add_argument("--threads", type=int, default=None, help="CPU threads (default: the CPUs available)")
    predict.add_argument("--keep-scenes", action="store_true", help="keep the scene rasters in OUT/scenes/")
    predict.add_argument(
        "--stac", action="store_true", help="also write a STAC item beside each mask and OUT/collection.json"
    )
    predict.set_defaults(run=_predict)

    thesis = commands.add_parser(
        "import-thesis",
        help="turn a thesis U-Net state dict (.pth) into a model.pt",
        description="Rename the parameters of a state dict saved by the thesis's training code to snowcloud's "
        "U-Net and write a model.pt with the preset's bands, elevation, normalisation and preprocessing, so "
        "that predict and the workflow (experiments.<name>.model) can run it.",
    )
    thesis.add_argument("pth", type=Path, help="the thesis's state dict, e.g. unet_a82e3cd_ep30.pth")
    thesis.add_argument(
        "--preset",
        required=True,
        help="the name of a preset shipped with snowcloud (the checkout's config/presets/), or a preset YAML file",
    )
    thesis.add_argument("--out", type=Path, required=True, help="the model.pt to write")
    thesis.set_defaults(run=_import_thesis)
    return parser


def _demo(args: argparse.Namespace) -> int:
    from snowcloud.demo import make_demo_data

    demo = {"enabled": True, "tiles": args.tiles, "dates": args.dates, "size": args.size, "seed": args.seed}
    demo["scale"] = args.scale
    validate_config({"demo": demo})
    make_demo_data(
        demo,
        args.out / "raw",
        str(args.out / "dem" / "T{tile}.tif"),
        str(args.out / "labels" / "T{tile}" / "{date}.tif"),
        threads=args.threads,
    )
    print(f"demo data in {args.out}: raw/, dem/, labels/")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(*args.files)
    if args.show:
        print(yaml.safe_dump(config, sort_keys=False), end="")
    runs = experiments_to_run(config)
    datasets = datasets_of(config, runs)
    given = {name: _check_given_model(config, name) for name in runs if model_file(config["experiments"][name])}
    source = "the demo data" if config["demo"]["enabled"] else f"products under {config['raw_data']}"
    print(f"configuration OK ({', '.join(map(str, args.files))})")
    print(f"  inputs: {source}; experiments: {', '.join(runs) or 'none'}; datasets: {', '.join(datasets) or 'none'}")
    for name, line in given.items():
        print(f"  experiments.{name}.model: {line}")
    return 0


def _check_given_model(config: dict, name: str) -> str:
    """What the workflow checks as it plans an inference-only experiment (its model.pt can predict, the
    preprocessing it records is valid), with the same errors; a line saying what the model is."""
    from snowcloud.checkpoint import given_model  # torch: only for configurations that run a given model

    path = model_file(config["experiments"][name])
    sha256, metadata = given_model(path)
    own = options_for_model(config["preprocess"], metadata.get("preprocess")) is not None
    scenes = "scene rasters of its own (its training scenes were made otherwise)" if own else "the shared scene rasters"
    return f"{path} (SHA-256 {sha256[:12]}, classes {', '.join(recorded_classes(metadata, str(path)))}) on {scenes}"


def _predict(args: argparse.Namespace) -> int:
    import logging

    from snowcloud.predict import predict_inputs, report
    from snowcloud.training.runtime import available_cpus

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    jobs, class_names = predict_inputs(
        args.model,
        args.inputs,
        args.out,
        dem=args.dem,
        tta=args.tta,
        device=args.device,
        batch_size=args.batch_size,
        probabilities=args.probabilities,
        quicklook=args.quicklook,
        threads=args.threads or available_cpus(),
        keep_scenes=args.keep_scenes,
        stac=args.stac,
    )
    for line in report(jobs, class_names):
        print(line)
    for job in jobs:
        if job.error is not None:
            print(f"snowcloud predict: {job.source}: {job.error}", file=sys.stderr)
    return 1 if any(job.error is not None for job in jobs) else 0


def _import_thesis(args: argparse.Namespace) -> int:
    from snowcloud.thesis import import_thesis

    import_thesis(args.pth, args.preset, args.out)
    print(f"wrote {args.out}")
    return 0


def _info(args: argparse.Namespace) -> int:
    path: Path = args.path
    for matches, describe in _DESCRIBERS:
        if matches(path):
            for line in describe(path):
                print(line)
            return 0
    raise CommandError(f"{path}: not a file snowcloud knows (SAFE product, .tif, .h5 shard, stats.json, model.pt)")


def _describe_product(path: Path) -> list[str]:
    from snowcloud.safe import open_safe

    product = open_safe(path)
    offsets = sorted(set(product.offsets.values()))
    return [
        f"{product.name}",
        f"  tile {product.tile}, sensing {product.date}, processing baseline {product.processing_baseline}",
        f"  quantification {product.quantification_value:g}, radiometric offsets {offsets}",
        f"  10 m grid {product.width} x {product.height}, {product.crs}, origin "
        f"({product.transform.c:.0f}, {product.transform.f:.0f})",
    ]


def _describe_raster(path: Path) -> list[str]:
    import rasterio

    with rasterio.open(path) as raster:
        lines = [
            f"{path}: {raster.count} band(s) {raster.dtypes[0]}, {raster.width} x {raster.height} px, "
            f"{raster.res[0]:g} m, {raster.crs}",
            f"  bands: {', '.join(d or str(i + 1) for i, d in enumerate(raster.descriptions))}",
            f"  nodata {raster.nodata}, blocks {raster.block_shapes[0]}, compression {raster.compression}, "
            f"overviews {raster.overviews(1)}",
        ]
        lines += [f"  {key}: {value}" for key, value in sorted(raster.tags().items())]
    return lines


def _describe_shard(path: Path) -> list[str]:
    from snowcloud.shards import read_attributes

    attributes = read_attributes(path)
    lines = [f"{path}: {attributes.get('patches')} patches of {attributes.get('patch_size')} px"]
    lines += [f"  {key}: {_short(value)}" for key, value in sorted(attributes.items())]
    return lines


def _describe_stats(path: Path) -> list[str]:
    from snowcloud.dataset_stats import load_stats

    stats = load_stats(path)
    weights = stats.get("class_weights", {})
    lines = [f"{path}: dataset {stats.get('dataset')}, digest {stats.get('digest')}"]
    values = _classes(recorded_classes(stats, str(path)), weights.get("values", []))
    lines.append(f"  class weights ({weights.get('formula')}): {values}")
    lines += [f"  {key}: {_short(value)}" for key, value in sorted(stats.items()) if key not in ("class_weights",)]
    return lines


def _describe_model(path: Path) -> list[str]:
    from snowcloud.checkpoint import read_checkpoint

    checkpoint = read_checkpoint(path)
    metadata = checkpoint["metadata"]
    parameters = sum(tensor.numel() for tensor in checkpoint["state_dict"].values())
    lines = [
        f"{path}: {metadata['architecture']} {metadata['model_args']} ({parameters:,} weights and buffers)",
        f"  bands: {', '.join(metadata.get('bands', []))}",
        f"  normalisation: {metadata.get('normalisation', {}).get('name')} "
        f"version {metadata.get('normalisation', {}).get('version')}",
    ]
    lines += [f"  {key}: {_short(value)}" for key, value in sorted(metadata.items()) if key not in ("bands",)]
    return lines


def _classes(names: list[str], values: list[float]) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in zip(names, values))


def _short(value: object, limit: int = 300) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_DESCRIBERS: list[tuple[Callable[[Path], bool], Callable[[Path], list[str]]]] = [
    (lambda p: p.name.endswith((".SAFE", ".SAFE.zip")) or (p.suffix == ".zip"), _describe_product),
    (lambda p: p.suffix.lower() in (".tif", ".tiff", ".jp2"), _describe_raster),
    (lambda p: p.suffix in (".h5", ".hdf5"), _describe_shard),
    (lambda p: p.suffix == ".json", _describe_stats),
    (lambda p: p.suffix in (".pt", ".pth"), _describe_model),
]


if __name__ == "__main__":
    sys.exit(main())
