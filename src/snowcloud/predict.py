"""`snowcloud predict`: masks for new products from a trained model, without the workflow.

Each input (a `.SAFE.zip`, a `.SAFE` folder, a folder holding products, or a scene raster the workflow made) is
preprocessed with the options the model's training scenes were made with (`model.pt` records them), predicted
with the model's bands and normalisation (snowcloud.infer) and written like the workflow's outputs:
OUT/{tile}/{date}.tif (+ `{date}_proba.tif`, `{date}.png`). An input that fails for what it is (the project's
errors for bad inputs, `INPUT_ERRORS`, and I/O errors) is reported by name and the others go on; any other
exception is a bug and stops the run with its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import rasterio
from tqdm import tqdm

from snowcloud import infer, preprocess
from snowcloud.atomic import scratch_folder
from snowcloud.bands import ELEVATION
from snowcloud.config import recorded_value_options, validated
from snowcloud.dem import DemError
from snowcloud.inventory import find_products, scene_path
from snowcloud.mask import read_class_counts
from snowcloud.normalisation import NormalisationError
from snowcloud.quicklook import quicklook
from snowcloud.safe import SafeError, open_safe
from snowcloud.scene import SceneError, band_indexes, recorded_preprocess
from snowcloud.season import season_rows, write_season_table
from snowcloud.stac import mask_collection, save_collection
from snowcloud.windows import window_count

log = logging.getLogger(__name__)

SCENE_SUFFIXES = (".tif", ".tiff")
SEASON_TABLE = "season.csv"  # in OUT: the season table of the masks


class PredictError(ValueError):
    """A command line that cannot run at all (no input, a model that needs a DEM and none given)."""


# What one input can fail with and leave the others to run: the errors the project raises for a product, scene
# raster or DEM it cannot use, and I/O errors (a file that cannot be read, a full disk). Anything else is a bug.
INPUT_ERRORS = (
    SafeError,
    SceneError,
    preprocess.PreprocessError,
    DemError,
    NormalisationError,
    infer.InferenceError,
    PredictError,
    OSError,
)


@dataclass
class Job:
    """One input and what became of it."""

    source: Path
    kind: str  # "product" or "scene"
    tile: str = ""
    date: str = ""
    windows: int = 0
    error: str | None = None
    seconds: float = 0.0
    output: Path | None = None
    percentages: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.source.name


def inference_options(**overrides: object) -> dict:
    """`experiments.<name>.inference` with the schema's defaults, `overrides` (not None) applied."""
    return validated({key: value for key, value in overrides.items() if value is not None}, "inference")


def collect_jobs(inputs: list[Path]) -> list[Job]:
    """One job per product or scene raster; a folder that is not a .SAFE stands for the products under it."""
    jobs = []
    for path in inputs:
        if path.is_dir() and path.suffix != ".SAFE":
            products = find_products(path)
            if not products:
                jobs.append(Job(path, "product", error=f"{path}: no L1C product (*.SAFE.zip, *.SAFE) under it"))
            jobs += [Job(product.path, "product") for product in products.values()]
        else:
            jobs.append(Job(path, "scene" if path.suffix.lower() in SCENE_SUFFIXES else "product"))
    return jobs


def model_preprocessing(model: infer.LoadedModel) -> dict:
    """The preprocess options for products: those the model's training scenes were made with, the DEM band
    exactly when the model reads elevation."""
    recorded = model.metadata.get("preprocess")
    if recorded is None:
        log.warning(
            "%s does not record how its training scenes were preprocessed (a checkpoint from before that was "
            "stored): products are preprocessed with the defaults of the schema (src/snowcloud/schema.yaml)",
            model.path,
        )
    return validated({**(recorded or {}), "dem": uses_elevation(model)}, "preprocess")


def uses_elevation(model: infer.LoadedModel) -> bool:
    return ELEVATION in model.metadata["bands"]


def dem_for(pattern: str | None, job: Job) -> str | None:
    """The DEM file for a product's tile ({tile} in the pattern is filled in), checked to exist."""
    if pattern is None:
        return None
    path = scene_path(pattern, job.tile)
    if not path.is_file():
        raise PredictError(f"no DEM for tile {job.tile}: {path} does not exist (--dem {pattern})")
    return str(path)


def inspect(job: Job, model: infer.LoadedModel, options: dict, dem: str | None) -> None:
    """Tile, date and window count of a job (cheap checks first, so a broken input fails before any work)."""
    if job.kind == "product":
        product = open_safe(job.source)
        job.tile, job.date, shape = product.tile, product.date, (product.height, product.width)
        dem_for(dem, job)
    else:
        with rasterio.open(job.source) as dataset:
            tags = dataset.tags()
            if "TILE" not in tags or "SENSING_TIME" not in tags:
                raise PredictError(f"{job.source}: not a scene raster of the workflow (no TILE / SENSING_TIME tags)")
            band_indexes(dataset, list(model.metadata["bands"]), f"the model {model.path}")
            job.tile, job.date, shape = tags["TILE"], tags["SENSING_TIME"], dataset.shape
        recorded = model.metadata.get("preprocess")
        made_with = recorded_value_options(recorded_preprocess(job.source))
        if (
            recorded
            and made_with
            and {k: v for k, v in made_with.items() if k != "dem"} != {k: v for k, v in recorded.items() if k != "dem"}
        ):
            log.warning(
                "%s was preprocessed with %s, the model's training scenes with %s", job.source, made_with, recorded
            )
    job.windows = window_count(*shape, model.patch_size, options)


def predict_scene_and_quicklook(
    model_path: str, scene: str, output: str, quicklook_path: str, options: dict, threads: int = 1
) -> None:
    """infer.predict_scene, then the quicklook of the new prediction: the workflow's `infer` job (one job per
    scene, so a run of many dates does not pay a second job's scheduling and start-up for the quicklook)."""
    infer.predict_scene(model_path, scene, output, options, threads)
    quicklook(scene, output, quicklook_path)


def output_path(out: Path, job: Job) -> Path:
    return out / job.tile / f"{job.date}.tif"


def run_job(
    job: Job,
    model: infer.LoadedModel,
    out: Path,
    options: dict,
    preprocessing: dict,
    dem: str | None,
    settings: dict,
    progress: tqdm,
) -> None:
    """Preprocess (products), predict, quicklook; the class percentages of the mask."""
    output = output_path(out, job)
    with _scene_for(job, output, out, settings["keep_scenes"]) as scene:
        if job.kind == "product":
            preprocess.preprocess_scene(job.source, dem_for(dem, job), scene, preprocessing, settings["threads"])
        infer.predict_with(model, scene, output, options, progress)
        if settings["quicklook"]:
            quicklook(str(scene), str(output), str(output.with_suffix(".png")))
    job.output = output
    job.percentages = class_percentages(output)


@contextlib.contextmanager
def _scene_for(job: Job, output: Path, out: Path, keep: bool) -> Iterator[Path]:
    """Where the job's scene raster is: the input itself, OUT/scenes/{tile}/{date}.tif, or a file in a scratch
    folder of the mask `output` (named as its temporaries are, so the next run removes that of a killed one)."""
    if job.kind == "scene":
        yield job.source
    elif keep:
        yield out / "scenes" / job.tile / f"{job.date}.tif"
    else:
        with scratch_folder(output, "scene") as scratch:
            yield scratch / f"{job.date}.tif"


def class_percentages(mask: Path) -> dict[str, float]:
    """Share of each class among the valid pixels of a mask, and of no data among all pixels, in %, from the
    counts the mask recorded when it was written."""
    counts = read_class_counts(mask)
    shares = {name: 100 * n / counts.valid if counts.valid else 0.0 for name, n in zip(counts.classes, counts.counts)}
    return shares | {"no data": 100 * counts.nodata / counts.pixels}


def predict_inputs(
    model_path: Path,
    inputs: list[Path],
    out: Path,
    *,
    dem: str | None = None,
    tta: bool | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    probabilities: bool = False,
    quicklook: bool = False,
    threads: int = 1,
    keep_scenes: bool = False,
    stac: bool = False,
) -> tuple[list[Job], list[str]]:
    """Predict every input; return the jobs with their outcome (an `error` for each input that failed) and the
    model's class names, in the order of its outputs. The masks' season table goes to OUT/season.csv and, with
    `stac`, their STAC items beside them and OUT/collection.json."""
    options = inference_options(tta=tta, device=device, batch_size=batch_size, probabilities=probabilities)
    model = infer.load_for_inference(model_path, options, threads)
    jobs = collect_jobs(inputs)
    if not jobs:
        raise PredictError("no input given")
    if uses_elevation(model) and dem is None and any(job.kind == "product" for job in jobs):
        raise PredictError(
            f"the model {model_path} reads elevation (band {ELEVATION}): give the DEM with --dem PATH (a GeoTIFF "
            "covering the tiles, or a pattern with {tile}, e.g. dem/T{tile}.tif)"
        )
    preprocessing = model_preprocessing(model)
    out.mkdir(parents=True, exist_ok=True)
    seen: dict[tuple[str, str], Job] = {}
    for job in jobs:
        if job.error is None:
            _attempt(job, lambda job=job: inspect(job, model, options, dem))
        if job.error is None and (job.tile, job.date) in seen:
            job.error = f"same tile and date ({job.tile} {job.date}) as {seen[(job.tile, job.date)].source}"
        if job.error is None:
            seen[(job.tile, job.date)] = job
    settings = {"threads": threads, "keep_scenes": keep_scenes, "quicklook": quicklook}
    total = sum(job.windows for job in jobs if job.error is None)
    with tqdm(total=total, unit="window", desc="predict", mininterval=1.0) as progress:
        for job in (job for job in jobs if job.error is None):
            counted = progress.n
            _attempt(job, lambda job=job: run_job(job, model, out, options, preprocessing, dem, settings, progress))
            if job.error is not None:  # take the windows it will never run off the total
                progress.total -= job.windows - (progress.n - counted)
                progress.refresh()
    write_summaries([job.output for job in jobs if job.output is not None], out, model, stac, quicklook)
    return jobs, model.class_names


def write_summaries(masks: list[Path], out: Path, model: infer.LoadedModel, stac: bool, quicklooks: bool) -> None:
    """OUT/season.csv of the masks (the season section's defaults say which classes are snow and cloud) and,
    with `stac`, their STAC collection in OUT (the quicklooks as the items' overviews); nothing without a mask."""
    if not masks:
        return
    write_season_table(season_rows(masks), out / SEASON_TABLE, {})
    if stac:
        name = str(model.metadata.get("experiment") or Path(model.path).stem)
        description = f"snowcloud masks predicted with {model.path}"
        save_collection(mask_collection(masks, out, name, description, quicklooks))


def _attempt(job: Job, work) -> None:  # noqa: ANN001 - a callable without arguments
    """Run `work` for a job, timing it; an input error becomes the job's error (logged with its traceback),
    anything else propagates."""
    start = time.perf_counter()
    try:
        work()
    except INPUT_ERRORS as error:  # a broken input must not stop the others; the message names the file
        log.debug("%s failed", job.source, exc_info=True)
        job.error = f"{type(error).__name__}: {error}"
    finally:
        job.seconds += time.perf_counter() - start


def report(jobs: list[Job], class_names: list[str]) -> list[str]:
    """The table printed at the end: one line per input (class %, seconds, output or error)."""
    columns = [*class_names, "no data"]
    lines = [
        "  ".join(
            ["input".ljust(40), "tile   date           ", *(f"{c[:10]:>10}" for c in columns), "seconds", "output"]
        )
    ]
    for job in jobs:
        identity = f"{job.tile or '?':6} {job.date or '?':15}"
        if job.error is None:
            shares = [f"{job.percentages.get(c, 0.0):9.1f}%" for c in columns]
            lines.append(
                "  ".join([job.name[:40].ljust(40), identity, *shares, f"{job.seconds:7.1f}", str(job.output)])
            )
        else:
            lines.append("  ".join([job.name[:40].ljust(40), identity, "FAILED", f"{job.seconds:.1f} s:", job.error]))
    failed = sum(job.error is not None for job in jobs)
    lines.append(f"{len(jobs) - failed} of {len(jobs)} input(s) predicted" + (f", {failed} failed" if failed else ""))
    return lines
