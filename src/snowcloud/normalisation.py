"""Named, versioned normalisation specs: scene values (offset-corrected DN, elevation in metres) -> network input.

A spec is a JSON-serialisable dict ``{"name", "version", ...constants}`` from :func:`spec`. It is stored in every
shard and checkpoint; :func:`apply` reads the constants from the dict it is given, so a stored spec is applied
exactly as stored. Methods that need per-scene statistics get them from :func:`scene_statistics` (streamed
over the scene block row by block row, bounded memory); the others get ``{}``. Every method maps invalid
pixels to 0 and never returns NaN, inf or a value outside the float16 range (checked, with the source named).
docs/normalisation.md describes each spec, its constants and the thesis commits that use it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio

from snowcloud import scene
from snowcloud.bands import BANDS

log = logging.getLogger(__name__)

FLOAT16_MAX = float(np.finfo(np.float16).max)
N_BANDS = len(BANDS)

# Thesis section 3.3: means over 21 scenes of per-scene statistics of the raw bands (B01..B12 incl. B8A).
DW_P30 = [1390, 1032, 759, 544, 633, 900, 974, 907, 981, 470, 16, 236, 151]
DW_P70 = [9084, 9637, 9415, 10306, 10437, 10482, 10377, 10113, 10184, 5892, 504, 4044, 3295]
DW_MEAN = [3747, 3561, 3307, 3407, 3596, 4049, 4203, 4089, 4268, 2270, 138, 1831, 1332]

# snowcloud-v1 constants: asinh(reflectance / 0.01) of the thesis P30 and P70 per band; centre = their midpoint,
# scale = their half distance / 0.5244 (the 30 % and 70 % quantiles of a standard normal lie at -+0.5244).
V1_CENTRE = [4.2643, 4.1455, 3.9812, 3.8619, 3.9429, 4.1194, 4.1537, 4.1054, 4.1479, 3.5106, 1.2398, 2.9935, 2.6943]
V1_SCALE = [1.7887, 2.1280, 2.3968, 2.7967, 2.6664, 2.3379, 2.2534, 2.2964, 2.2287, 2.4004, 2.0604, 2.6689, 2.8490]


class NormalisationError(ValueError):
    """A spec, scene or window that cannot be normalised; the message names the source."""


def _legacy_dn10000() -> dict:
    return {"name": "legacy-dn10000", "version": 1, "band_scale": 10000.0, "elevation_scale": 10000.0}


def _sigma_clip() -> dict:
    return {"name": "sigma-clip", "version": 1, "n_sigma": 2.0, "lower_bound": 0.0}


def _dynamic_world_percentile() -> dict:
    return {
        "name": "dynamic-world-percentile",
        "version": 1,
        "p30": list(DW_P30),
        "p70": list(DW_P70),
        "mean": list(DW_MEAN),
        "sigmoid_low": -1.7346,
        "sigmoid_high": 1.7346,
        "log_floor": 1.0,
        "elevation_centre": 1862.78,
        "elevation_scale": 3913.0,
    }


def _snowcloud_v1() -> dict:
    return {
        "name": "snowcloud-v1",
        "version": 1,
        "band_scale": 10000.0,
        "asinh_scale": 0.01,
        "centre": list(V1_CENTRE),
        "scale": list(V1_SCALE),
        "elevation_centre": 1500.0,
        "elevation_scale": 1000.0,
        "clip": 8.0,
    }


SPECS: dict[str, Callable[[], dict]] = {
    "snowcloud-v1": _snowcloud_v1,
    "legacy-dn10000": _legacy_dn10000,
    "sigma-clip": _sigma_clip,
    "dynamic-world-percentile": _dynamic_world_percentile,
}
DEFAULT = "snowcloud-v1"


def names() -> list[str]:
    return list(SPECS)


def spec(name: str = DEFAULT) -> dict:
    """The current version of the named spec, with its constants."""
    if name not in SPECS:
        raise NormalisationError(f"unknown normalisation '{name}' (known: {', '.join(SPECS)})")
    return SPECS[name]()


# --- the methods: (spec, values (C, H, W) float32, statistics) -> float32 (C, H, W) -------------------------


def _per_band(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)[:, None, None]


def _legacy_apply(spec: dict, x: np.ndarray, statistics: dict) -> np.ndarray:
    out = x[:N_BANDS] / np.float32(spec["band_scale"])
    return _with_elevation(out, x, lambda e: e / np.float32(spec["elevation_scale"]))


def _sigma_clip_apply(spec: dict, x: np.ndarray, statistics: dict) -> np.ndarray:
    low, high = _per_band(statistics["low"]), _per_band(statistics["high"])
    span = high - low
    inverse_span = np.divide(1, span, out=np.zeros_like(span), where=span > 0)  # constant band -> 0
    out = (np.clip(x[:N_BANDS], low, np.maximum(low, high)) - low) * inverse_span
    return _with_elevation(out, x, lambda e: e / np.float32(statistics["elevation_max"]))


def dynamic_world_offsets(spec: dict) -> np.ndarray:
    """off_b = the sigmoid of the per-band mean: what the method subtracts (thesis 3.3, B01 0.5245 ... B12 0.6716)."""
    return _dw_sigmoid(spec, np.asarray(spec["mean"], dtype=np.float64)[:, None, None])[:, 0, 0]


def _dw_sigmoid(spec: dict, x: np.ndarray) -> np.ndarray:
    """log10 of x (floored: values <= 0 after the -1000 offset map like the thesis's 0), mapped linearly so that
    log10(P30) -> sigmoid_low and log10(P70) -> sigmoid_high, then the logistic function."""
    low, high = spec["sigmoid_low"], spec["sigmoid_high"]
    c = np.log10(np.asarray(spec["p30"], dtype=np.float64))[:, None, None]
    d = np.log10(np.asarray(spec["p70"], dtype=np.float64))[:, None, None]
    gain = ((high - low) / (d - c)).astype(x.dtype)
    log_x = np.log10(np.maximum(x, x.dtype.type(spec["log_floor"])))
    z = (log_x - c.astype(x.dtype)) * gain + x.dtype.type(low)
    return 1 / (1 + np.exp(-z))


def _dynamic_world_apply(spec: dict, x: np.ndarray, statistics: dict) -> np.ndarray:
    out = _dw_sigmoid(spec, x[:N_BANDS]) - dynamic_world_offsets(spec).astype(np.float32)[:, None, None]
    centre, scale = np.float32(spec["elevation_centre"]), np.float32(spec["elevation_scale"])
    return _with_elevation(out, x, lambda e: (e - centre) / scale)


def _snowcloud_v1_apply(spec: dict, x: np.ndarray, statistics: dict) -> np.ndarray:
    reflectance = x[:N_BANDS] / np.float32(spec["band_scale"])
    out = (np.arcsinh(reflectance / np.float32(spec["asinh_scale"])) - _per_band(spec["centre"])) / _per_band(
        spec["scale"]
    )
    centre, scale = np.float32(spec["elevation_centre"]), np.float32(spec["elevation_scale"])
    out = _with_elevation(out, x, lambda e: (e - centre) / scale)
    return np.clip(out, -spec["clip"], spec["clip"], out=out)


def _with_elevation(bands: np.ndarray, x: np.ndarray, transform: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Stack the normalised bands with the transformed elevation channel when the window has one."""
    if len(x) == N_BANDS:
        return bands.astype(np.float32, copy=False)
    return np.concatenate([bands, transform(x[N_BANDS:])]).astype(np.float32, copy=False)


METHODS: dict[tuple[str, int], Callable[[dict, np.ndarray, dict], np.ndarray]] = {
    ("legacy-dn10000", 1): _legacy_apply,
    ("sigma-clip", 1): _sigma_clip_apply,
    ("dynamic-world-percentile", 1): _dynamic_world_apply,
    ("snowcloud-v1", 1): _snowcloud_v1_apply,
}
NEEDS_STATISTICS = {"sigma-clip"}


# --- the inverses of the methods with fixed constants: normalised bands (13, H, W) -> scene values ---------------


def _legacy_invert(spec: dict, bands: np.ndarray) -> np.ndarray:
    return bands * np.float32(spec["band_scale"])


def _dynamic_world_invert(spec: dict, bands: np.ndarray) -> np.ndarray:
    """The logistic's argument from the value plus the offset, then log10 back (values under the floor map to it)."""
    low, high = spec["sigmoid_low"], spec["sigmoid_high"]
    c = np.log10(np.asarray(spec["p30"], dtype=np.float64))[:, None, None]
    d = np.log10(np.asarray(spec["p70"], dtype=np.float64))[:, None, None]
    gain = (high - low) / (d - c)
    tiny = np.finfo(np.float32).eps
    sigmoid = np.clip(bands + dynamic_world_offsets(spec)[:, None, None], tiny, 1 - tiny)
    z = np.log(sigmoid / (1 - sigmoid))
    return (10 ** ((z - low) / gain + c)).astype(np.float32)


def _snowcloud_v1_invert(spec: dict, bands: np.ndarray) -> np.ndarray:
    asinh = bands * _per_band(spec["scale"]) + _per_band(spec["centre"])
    return np.sinh(asinh) * np.float32(spec["asinh_scale"] * spec["band_scale"])


INVERSES: dict[tuple[str, int], Callable[[dict, np.ndarray], np.ndarray]] = {
    ("legacy-dn10000", 1): _legacy_invert,
    ("dynamic-world-percentile", 1): _dynamic_world_invert,
    ("snowcloud-v1", 1): _snowcloud_v1_invert,
}


def invertible(spec: dict) -> bool:
    """Whether :func:`band_values` can turn the spec's normalised bands back into scene values (fixed constants;
    sigma-clip's depend on each scene's statistics, which a shard's patches do not carry)."""
    return (spec.get("name"), spec.get("version")) in INVERSES


def band_values(spec: dict, bands: np.ndarray) -> np.ndarray:
    """The scene values (offset-corrected DN) of normalised bands (13, H, W): `apply`'s inverse for the bands, up
    to its clipping (snowcloud-v1 clips far beyond any reflectance) and to the float16 rounding of a shard."""
    _method(spec)
    if not invertible(spec):
        raise NormalisationError(
            f"normalisation {spec['name']} cannot be inverted (it depends on per-scene statistics); use one with "
            f"fixed constants ({', '.join(name for name, _ in INVERSES)})"
        )
    if len(bands) != N_BANDS:
        raise NormalisationError(f"expected the {N_BANDS} normalised bands, got {len(bands)} channels")
    return INVERSES[(spec["name"], spec["version"])](spec, np.asarray(bands, dtype=np.float32)).astype(np.float32)


def _method(spec: dict) -> Callable[[dict, np.ndarray, dict], np.ndarray]:
    key = (spec.get("name"), spec.get("version"))
    if key not in METHODS:
        known = ", ".join(f"{name} v{version}" for name, version in METHODS)
        raise NormalisationError(f"unknown normalisation {key[0]!r} version {key[1]!r} (known: {known})")
    return METHODS[key]


def check_spec(stored: object) -> None:
    """NormalisationError unless `stored` is a spec `apply` can use: a known name and version with every
    constant of that spec, a number per band where the spec has per-band lists."""
    if not isinstance(stored, dict):
        raise NormalisationError(f"{stored!r} is not a spec (a mapping with name, version and constants)")
    _method(stored)
    for key, value in SPECS[stored["name"]]().items():
        if key not in stored:
            raise NormalisationError(f"normalisation {stored['name']} lacks its constant {key!r}")
        given = stored[key]
        if isinstance(value, list) and not (
            isinstance(given, list) and len(given) == len(value) and all(map(_is_number, given))
        ):
            raise NormalisationError(
                f"normalisation {stored['name']}: {key} must be {len(value)} numbers, got {given!r}"
            )
        if isinstance(value, float) and not _is_number(given):
            raise NormalisationError(f"normalisation {stored['name']}: {key} must be a number, got {given!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


INT16_VALUES = 1 << 16
LOOKUP_CHUNK_PIXELS = 1 << 16  # pixels looked up at once: numpy's take makes a 512 kB intp index of them


def _value_table(
    method: Callable[[dict, np.ndarray, dict], np.ndarray], spec: dict, statistics: dict, channels: int
) -> np.ndarray:
    """(C, 65536) float32: what `method` gives for each int16 value of each channel, at the value's bits read as
    uint16 (0..32767 the non-negative values, 32768..65535 the negative ones)."""
    values = np.arange(INT16_VALUES, dtype=np.uint16).view(np.int16).astype(np.float32)
    return method(spec, np.ascontiguousarray(np.broadcast_to(values, (channels, 1, INT16_VALUES))), statistics)[:, 0]


def _looked_up(table: np.ndarray, window: np.ndarray) -> np.ndarray:
    """An int16 (C, H, W) window's values looked up in a `_value_table`: float32 (C, H, W), a few rows at a time
    (the index numpy makes of them stays in the CPU's cache: twice as fast as whole channels)."""
    out = np.empty(window.shape, np.float32)
    step = max(1, LOOKUP_CHUNK_PIXELS // window.shape[2])
    for channel, values in enumerate(window.view(np.uint16)):
        for first in range(0, values.shape[0], step):
            np.take(table[channel], values[first : first + step], out=out[channel, first : first + step])
    return out


def _within_float16(values: np.ndarray) -> np.ndarray:
    """Where values are finite and within the float16 range (False for NaN)."""
    return np.abs(values) <= FLOAT16_MAX


class Normaliser:
    """`apply` bound to one spec and one scene's statistics, for the many windows of a scene: the int16 value
    table (see `apply`) is made once per channel count, not once per window."""

    def __init__(self, spec: dict, statistics: dict) -> None:
        self.spec, self.statistics = spec, statistics
        self.method = _method(spec)
        self._tables: dict[int, tuple[np.ndarray, bool]] = {}  # channels -> (table, all within float16)

    def _table(self, channels: int) -> tuple[np.ndarray, bool]:
        if channels not in self._tables:  # threads may both make it: the same numbers, either one is kept
            table = _value_table(self.method, self.spec, self.statistics, channels)
            self._tables[channels] = table, bool(_within_float16(table).all())
        return self._tables[channels]

    def __call__(self, window: np.ndarray, valid: np.ndarray, source: str = "window") -> np.ndarray:
        """The window normalised, as `apply` says."""
        spec, statistics = self.spec, self.statistics
        if window.ndim != 3 or len(window) not in (N_BANDS, N_BANDS + 1):
            raise NormalisationError(
                f"{source}: expected ({N_BANDS} or {N_BANDS + 1}, H, W) values, got {window.shape}"
            )
        if valid.shape != window.shape[1:]:
            raise NormalisationError(f"{source}: valid mask {valid.shape} does not match the window {window.shape}")
        if spec["name"] in NEEDS_STATISTICS and not statistics:
            raise NormalisationError(f"{source}: normalisation {spec['name']} needs the scene statistics")
        if spec["name"] == "sigma-clip" and len(window) > N_BANDS and statistics.get("elevation_max") is None:
            raise NormalisationError(f"{source}: sigma-clip statistics lack the elevation maximum")
        looked_up = window.dtype == np.int16 and window[0].size > INT16_VALUES
        if looked_up:
            table, table_within_float16 = self._table(len(window))
            out = _looked_up(table, window)
        else:
            out = self.method(spec, np.asarray(window, dtype=np.float32), statistics)
        out[:, ~valid] = 0
        if looked_up and table_within_float16:  # then so is every value looked up, and the zeros
            return out
        bad = ~_within_float16(out)
        if bad.any():
            channel, row, col = (int(i[0]) for i in np.nonzero(bad))
            raise NormalisationError(
                f"{source}: normalisation {spec['name']} gave {out[channel, row, col]} (NaN, inf or beyond float16) "
                f"at channel {channel}, row {row}, col {col} of the window ({int(bad.sum())} values); input value "
                f"{window[channel, row, col]}"
            )
        return out


def apply(spec: dict, window: np.ndarray, valid: np.ndarray, statistics: dict, source: str = "window") -> np.ndarray:
    """Normalise scene values (C, H, W) (13 bands, then elevation if C == 14) -> float32 (C, H, W).

    Pure: `window` is not modified. Invalid pixels (``valid`` False) become 0. Raises NormalisationError naming
    `source` if the result holds NaN, inf or a value beyond the float16 range. An int16 window (a scene raster's
    values as stored) larger than 65536 pixels is normalised by looking its values up in a table of the method
    applied to every int16 value: the same numbers (every method maps each channel's values one by one), in a
    fraction of the time (snowcloud-v1: half the CPU time). Many windows of one scene: use a `Normaliser`,
    which makes that table once.
    """
    return Normaliser(spec, statistics)(window, valid, source)


# --- scene rasters: normalised windows and streamed statistics -----------------------------------------------


def scene_statistics(spec: dict, scene_path: str | Path, sub_rows: int = 64) -> dict:
    """Per-scene statistics the spec needs, over the valid pixels of the scene, computed block row by block
    row; {} when the method has fixed constants. sigma-clip: per band mean, std, min, max and the clip bounds
    low/high, plus the elevation maximum when the scene has an elevation band."""
    _method(spec)
    if spec["name"] not in NEEDS_STATISTICS:
        return {}
    with rasterio.open(scene_path) as src:
        scene.check_scene(src, elevation=False, source=str(scene_path))
        moments = _streamed_moments(src, sub_rows)
    if moments["count"] == 0:
        raise NormalisationError(f"{scene_path}: the scene has no valid pixel to compute {spec['name']} statistics")
    log.info("%s: %s statistics over %d valid pixels", scene_path, spec["name"], moments["count"])
    return _sigma_clip_statistics(spec, moments, str(scene_path))


def _streamed_moments(src: rasterio.DatasetReader, sub_rows: int) -> dict:
    """Count, mean, M2 (sum of squared deviations), min and max per band over the valid pixels, block row by
    block row and `sub_rows` rows at a time (Chan's parallel merge)."""
    count, mean = 0, np.zeros(src.count)
    m2, low, high = np.zeros(src.count), np.full(src.count, np.inf), np.full(src.count, -np.inf)
    for window in scene.block_strips(src):
        block = src.read(window=window)
        for rows in scene.sub_strips(window.height, sub_rows):
            raw = block[:, rows]
            valid = scene.valid_pixels(raw)
            n = int(valid.sum())
            if n == 0:
                continue
            values = raw[:, valid].astype(np.float64)
            strip_mean = values.mean(axis=1)
            strip_m2 = ((values - strip_mean[:, None]) ** 2).sum(axis=1)
            delta = strip_mean - mean
            total = count + n
            mean = mean + delta * n / total
            m2 = m2 + strip_m2 + delta**2 * count * n / total
            count = total
            low, high = np.minimum(low, values.min(axis=1)), np.maximum(high, values.max(axis=1))
    return {"count": count, "mean": mean, "m2": m2, "min": low, "max": high}


def _sigma_clip_statistics(spec: dict, moments: dict, source: str) -> dict:
    mean = moments["mean"][:N_BANDS]
    std = np.sqrt(moments["m2"][:N_BANDS] / moments["count"])
    # The clip bounds, tightened to the scene's range: the per-scene min-max after clipping.
    low = np.maximum.reduce(
        [mean - spec["n_sigma"] * std, np.full(N_BANDS, spec["lower_bound"]), moments["min"][:N_BANDS]]
    )
    high = np.minimum(mean + spec["n_sigma"] * std, moments["max"][:N_BANDS])
    statistics = {
        "valid_pixels": int(moments["count"]),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "min": moments["min"][:N_BANDS].tolist(),
        "max": moments["max"][:N_BANDS].tolist(),
        "low": low.tolist(),
        "high": high.tolist(),
        "elevation_max": None,
    }
    if len(moments["mean"]) > N_BANDS:
        elevation_max = float(moments["max"][N_BANDS])
        if elevation_max <= 0:
            raise NormalisationError(
                f"{source}: sigma-clip divides elevation by its scene maximum, which is {elevation_max} m"
            )
        statistics["elevation_max"] = elevation_max
    return statistics


def describe(spec: dict) -> str:
    """One line for logs: name, version and the constants."""
    constants = {key: value for key, value in spec.items() if key not in ("name", "version")}
    return f"{spec['name']} v{spec['version']} {constants}"
