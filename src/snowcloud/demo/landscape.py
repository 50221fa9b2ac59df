"""The synthetic landscape of the demo: analytic terrain with lakes, a seasonal snow cover, moving clouds, and
the top-of-atmosphere (TOA) reflectance of all 13 bands that follows from them.

Everything horizontal is a scale model of a full 109.8 km tile: lengths are fractions of the demo's extent
(size x 10 m), so a 384-pixel demo holds the same mountains, lakes and clouds as a 10980-pixel one, only
smaller. Slopes (for shading and snow on cliffs) are those of the full-size landscape. Elevations are real
metres, and per-pixel effects (sensor noise, ground texture, mixed pixels at shorelines) are per pixel.
The terrain is an analytic function of map coordinates: the DEM samples it in geographic coordinates, the
scene on its UTM grid, and tests can ask for the elevation at any point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from statistics import NormalDist

import numpy as np

from snowcloud.bands import BANDS

FULL_EXTENT_M = 109_800.0

# Approximate spectra, bands in snowcloud.bands.BANDS order (B01..B12 with B8A).
#                       B01    B02    B03    B04    B05    B06    B07    B08    B8A    B09    B10    B11    B12
SNOW = np.array([0.96, 0.95, 0.93, 0.90, 0.88, 0.85, 0.82, 0.78, 0.75, 0.60, 0.15, 0.12, 0.07])
VEGETATION = np.array([0.05, 0.04, 0.06, 0.04, 0.09, 0.20, 0.25, 0.28, 0.29, 0.28, 0.05, 0.17, 0.08])
ROCK = np.array([0.10, 0.11, 0.13, 0.16, 0.18, 0.20, 0.21, 0.22, 0.23, 0.23, 0.20, 0.28, 0.22])
WATER = np.array([0.06, 0.05, 0.045, 0.03, 0.02, 0.012, 0.01, 0.008, 0.007, 0.005, 0.0, 0.003, 0.002])
CLOUD_TOA = np.array([0.78, 0.76, 0.75, 0.74, 0.75, 0.75, 0.75, 0.75, 0.74, 0.55, 0.06, 0.52, 0.36])
CIRRUS_TOA = np.array([0.30, 0.30, 0.30, 0.30, 0.30, 0.30, 0.30, 0.30, 0.30, 0.25, 0.40, 0.28, 0.22])
PATH_TOA = np.array([0.10, 0.07, 0.045, 0.025, 0.02, 0.015, 0.012, 0.01, 0.009, 0.005, 0.001, 0.002, 0.001])
# Two-way transmission of the surface signal; B09 sits in a water-vapour band, B10 is handled by elevation.
TRANSMISSION = np.array([0.85, 0.88, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.55, 0.0, 0.9, 0.9])
B10 = BANDS.index("B10")
# Sensor noise (standard deviation of TOA reflectance) at the native resolution of each band.
NOISE = np.array([0.003, 0.002, 0.002, 0.002, 0.002, 0.002, 0.002, 0.002, 0.002, 0.003, 0.001, 0.002, 0.002])
# Where the swath edge lies for each band, relative to B02 (metres across track): detectors see it apart.
SWATH_EDGE_SHIFT_M = np.array([30, 0, 10, 20, 25, 25, 30, 5, 30, 35, 40, 15, 20], dtype=float)

SNOW_TRANSITION_M = 60.0  # elevation over which the snow fraction goes from 0 to 1 across the snow line
SHORE_WIDTH_M = 10.0  # one pixel of mixed land and water along the shore
LABEL_MIXED = (0.3, 0.7)  # fractions between these leave a pixel unlabelled (255)
LABEL_THIN_CLOUD = 0.25  # cloud opacity from which a pixel is unlabelled (below 0.5) or cloud (from 0.5)


def seed_sequence(seed: int, *parts: str | int) -> np.random.SeedSequence:
    """A seed sequence for one purpose, e.g. seed_sequence(2023, "noise", "32TNS", "20211208T102421", 3)."""
    codes = [int.from_bytes(p.encode(), "big") if isinstance(p, str) else int(p) for p in parts]
    return np.random.SeedSequence([seed % 2**63, *codes])


def rng_for(seed: int, *parts: str | int) -> np.random.Generator:
    return np.random.default_rng(seed_sequence(seed, *parts))


@dataclass(frozen=True)
class WaveField:
    """A random smooth field: a sum of plane waves with unit standard deviation, evaluable anywhere."""

    kx: np.ndarray  # wave numbers in radians per metre
    ky: np.ndarray
    phase: np.ndarray
    amplitude: np.ndarray

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        n_waves: int,
        wavelengths_m: tuple[float, float],
        spectral_slope: float = 1.0,
        direction: tuple[float, float] = (0.0, math.pi),
    ) -> WaveField:
        """Wavelengths log-uniform in the range, amplitude proportional to wavelength**spectral_slope,
        directions uniform in `direction` = (centre, half-width) in radians."""
        wavelength = np.exp(rng.uniform(math.log(wavelengths_m[0]), math.log(wavelengths_m[1]), n_waves))
        angle = direction[0] + rng.uniform(-direction[1], direction[1], n_waves)
        amplitude = wavelength**spectral_slope
        amplitude /= np.sqrt(np.sum(amplitude**2) / 2)
        k = 2 * np.pi / wavelength
        return cls(k * np.cos(angle), k * np.sin(angle), rng.uniform(0, 2 * np.pi, n_waves), amplitude)

    def shifted(self, dx: float, dy: float) -> WaveField:
        """The field seen from a point displaced by (dx, dy): f'(x, y) = f(x + dx, y + dy)."""
        return WaveField(self.kx, self.ky, self.phase + self.kx * dx + self.ky * dy, self.amplitude)

    def grid(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Values on the grid of column coordinates `x` and row coordinates `y`: shape (len(y), len(x)).

        cos(kx x + ky y + p) = cos(kx x) cos(ky y + p) - sin(kx x) sin(ky y + p): one matrix product.
        """
        ax = np.outer(x, self.kx)
        ay = np.outer(y, self.ky) + self.phase
        rows = np.concatenate([np.cos(ay) * self.amplitude, -np.sin(ay) * self.amplitude], axis=1)
        cols = np.concatenate([np.cos(ax), np.sin(ax)], axis=1)
        return (rows @ cols.T).astype(np.float32)

    def points(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Values at points (x, y) of any (equal) shape.

        Coordinates are taken relative to the points' first one (the phases absorb the shift, in float64), so
        the per-point work runs in float32 with phase errors below 1e-4 radians.
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if not x.size:
            return np.zeros(np.broadcast(x, y).shape, dtype=np.float32)
        x0, y0 = float(x.flat[0]), float(y.flat[0])
        dx = (x - x0).astype(np.float32)
        dy = (y - y0).astype(np.float32)
        phases = np.mod(self.phase + self.kx * x0 + self.ky * y0, 2 * np.pi)
        out = np.zeros(np.broadcast(dx, dy).shape, dtype=np.float32)
        argument = np.empty_like(out)
        for kx, ky, phase, amplitude in zip(self.kx, self.ky, phases, self.amplitude):
            np.multiply(dx, np.float32(kx), out=argument)
            argument += np.float32(ky) * dy
            argument += np.float32(phase)
            np.cos(argument, out=argument)
            argument *= np.float32(amplitude)
            out += argument
        return out


@dataclass(frozen=True)
class Lake:
    """A lake in a depression: flat water at `level` inside an irregular shoreline around (x, y)."""

    x: float
    y: float
    radius: float
    level: float
    harmonics: tuple[tuple[int, float, float], ...]  # (order, relative amplitude, phase) of the shoreline

    def distance_and_shore(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distance of each point from the centre, and the shoreline radius in its direction."""
        dx, dy = x - self.x, y - self.y
        angle = np.arctan2(dy, dx)
        shore = np.full(np.broadcast(dx, dy).shape, self.radius)
        for order, amplitude, phase in self.harmonics:
            shore *= 1 + amplitude * np.cos(order * angle + phase)
        return np.hypot(dx, dy), shore


class Landscape:
    """Terrain and lakes of a demo: one continuous landscape for every tile of the same seed and size."""

    def __init__(self, seed: int, size: int) -> None:
        self.seed = seed
        self.extent = size * 10.0
        self.slope_scale = self.extent / FULL_EXTENT_M  # converts demo gradients into full-size slopes
        rng = rng_for(seed, "terrain")
        length = self.extent
        self.massifs = WaveField.random(rng, 24, (length / 3, 2 * length), 1.0)
        self.ridges = WaveField.random(rng, 32, (length / 10, length / 2), 1.0)
        self.detail = WaveField.random(rng, 32, (length / 50, length / 10), 1.5)
        self.lake_spacing = 0.3 * length
        self._lakes: dict[tuple[int, int], Lake | None] = {}

    def raw_elevation(self, massifs: np.ndarray, ridges: np.ndarray, detail: np.ndarray) -> np.ndarray:
        """Elevation (m) from the unit fields: massifs, sharp ridges, detail; valley floors flattened near 450 m."""
        elevation = 1350 + 650 * massifs + 500 * (0.5 - np.abs(ridges)) + 80 * detail
        floor, softness = 450.0, 80.0
        return floor + softness * np.logaddexp(0.0, (elevation - floor) / softness)

    def raw_elevation_points(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.raw_elevation(self.massifs.points(x, y), self.ridges.points(x, y), self.detail.points(x, y))

    def raw_elevation_grid(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.raw_elevation(self.massifs.grid(x, y), self.ridges.grid(x, y), self.detail.grid(x, y))

    def lake_in_cell(self, i: int, j: int) -> Lake | None:
        """The lake (if any) of lattice cell (i, j): about half the cells hold one, in their lowest part."""
        if (i, j) not in self._lakes:
            rng = rng_for(self.seed, "lake", i % 2**32, j % 2**32)
            exists, u, v, size = rng.uniform(size=4)
            lake = None
            if exists < 0.55:
                x = (i + 0.25 + 0.5 * u) * self.lake_spacing
                y = (j + 0.25 + 0.5 * v) * self.lake_spacing
                radius = (0.015 + 0.03 * size) * self.extent
                angles = np.linspace(0, 2 * np.pi, 32, endpoint=False)
                ring = self.raw_elevation_points(x + 1.6 * radius * np.cos(angles), y + 1.6 * radius * np.sin(angles))
                harmonics = tuple(
                    (order, float(rng.uniform(0.05, 0.25) / order), float(rng.uniform(0, 2 * np.pi))) for order in (2, 3, 5)
                )
                level = float(ring.min()) - 2.0
                in_basin = float(self.raw_elevation_points(np.array(x), np.array(y))) < level + 150
                lake = Lake(x, y, radius, level, harmonics) if in_basin and level < 2600 else None
            self._lakes[(i, j)] = lake
        return self._lakes[(i, j)]

    def lakes_near(self, left: float, bottom: float, right: float, top: float) -> list[Lake]:
        """Lakes whose surroundings (1.6 radii) reach into the box."""
        reach = 0.09 * self.extent  # >= 1.6 x the largest radius x the largest shoreline bulge
        cells_x = range(math.floor((left - reach) / self.lake_spacing), math.floor((right + reach) / self.lake_spacing) + 1)
        cells_y = range(math.floor((bottom - reach) / self.lake_spacing), math.floor((top + reach) / self.lake_spacing) + 1)
        lakes = [self.lake_in_cell(i, j) for i in cells_x for j in cells_y]
        return [lake for lake in lakes if lake is not None]

    def with_lakes(
        self, elevation: np.ndarray, x: np.ndarray, y: np.ndarray, lakes: list[Lake]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cut the lakes into the raw elevation at points (x, y) (arrays broadcasting to its shape):
        (elevation, water fraction, lake level or NaN).

        Inside the shoreline the surface is the flat lake level; around it the terrain is lowered smoothly
        towards the level, so each lake lies in a depression. The water fraction falls from 1 to 0 over one
        pixel at the shore (mixed pixels).
        """
        elevation = elevation.astype(np.float32)  # a copy
        water = np.zeros(elevation.shape, dtype=np.float32)
        level = np.full(elevation.shape, np.nan, dtype=np.float32)
        for lake in lakes:
            reach = 1.6 * lake.radius * np.prod([1 + amplitude for _, amplitude, _ in lake.harmonics])
            box = np.nonzero((np.abs(x - lake.x) < reach) & (np.abs(y - lake.y) < reach))
            if not box[0].size:
                continue
            px = np.broadcast_to(x, elevation.shape)[box]
            py = np.broadcast_to(y, elevation.shape)[box]
            height = elevation[box]
            distance, shore = lake.distance_and_shore(px, py)
            ramp = smoothstep((distance - shore) / (0.6 * shore))
            lowered = np.maximum(lake.level + (height - lake.level) * ramp, lake.level)
            height = np.where(distance < 1.6 * shore, np.minimum(height, lowered), height)
            elevation[box] = np.where(distance < shore, lake.level, height)
            fraction = np.clip((shore - distance) / SHORE_WIDTH_M + 0.5, 0, 1)
            level[box] = np.where(fraction > 0, lake.level, level[box])
            water[box] = np.maximum(water[box], fraction)
        return elevation, water, level

    def elevation_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Elevation (m) at map coordinates (metres in the tile's UTM zone), lakes included: what the DEM holds."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        lakes = self.lakes_near(float(x.min()), float(y.min()), float(x.max()), float(y.max())) if x.size else []
        elevation, _, _ = self.with_lakes(self.raw_elevation_points(x, y), x, y, lakes)
        return elevation


def smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0, 1)
    return t * t * (3 - 2 * t)


@dataclass(frozen=True)
class Conditions:
    """What changes from date to date: season (snow line, sun), clouds, and the swath edge of one scene."""

    snowline_m: float
    sun_zenith_deg: float
    sun_azimuth_deg: float
    cloud_cover: float
    cloud_field: WaveField
    shadow_shift_m: tuple[float, float]
    cirrus_opacity: float
    cirrus_field: WaveField
    snow_field: WaveField
    vegetation_field: WaveField
    swath_edge: tuple[float, float, float] | None  # unit normal (nx, ny) and offset c: valid where n.(x, y) < c

    @classmethod
    def for_scene(cls, seed: int, tile: str, date: str, landscape: Landscape, bounds: tuple[float, float, float, float]) -> Conditions:
        """Conditions of one scene, from the seed, the date (season, clouds: shared by tiles of one pass) and
        the tile (swath edge)."""
        when = datetime.strptime(date, "%Y%m%dT%H%M%S")
        day = when.timetuple().tm_yday
        extent = landscape.extent
        season = rng_for(seed, "season", date)
        snowline = 1700 - 800 * math.cos(2 * math.pi * (day - 20) / 365) + season.normal(0, 60)
        declination = -23.44 * math.cos(2 * math.pi * (day + 10) / 365)
        latitude = 46.5
        zenith = abs(latitude - declination) + 6.0
        azimuth = 158.0
        cover = float(season.uniform(0.08, 0.5))
        clouds = WaveField.random(season, 24, (extent / 20, 1.5 * extent), 0.9)
        height = season.uniform(1500, 4000) * landscape.slope_scale
        along = height * math.tan(math.radians(zenith))
        # The shadow of a cloud falls away from the sun: the shadow at p is cast by the cloud at p + shift.
        shift = (along * math.sin(math.radians(azimuth)), along * math.cos(math.radians(azimuth)))
        cirrus = float(season.uniform(0.3, 0.65)) if season.uniform() < 0.6 else 0.0
        streaks = WaveField.random(season, 24, (extent / 20, 1.5 * extent), 1.0, (season.uniform(0, math.pi), 0.5))
        ground = rng_for(seed, "ground")
        snow_field = WaveField.random(ground, 16, (extent / 25, extent / 2), 1.0)
        vegetation_field = WaveField.random(ground, 16, (extent / 40, extent / 3), 1.0)
        return cls(
            snowline_m=snowline,
            sun_zenith_deg=zenith,
            sun_azimuth_deg=azimuth,
            cloud_cover=cover,
            cloud_field=clouds,
            shadow_shift_m=shift,
            cirrus_opacity=cirrus,
            cirrus_field=streaks,
            snow_field=snow_field,
            vegetation_field=vegetation_field,
            swath_edge=swath_edge(seed, tile, date, bounds),
        )


def swath_edge(seed: int, tile: str, date: str, bounds: tuple[float, float, float, float]) -> tuple[float, float, float] | None:
    """A swath edge through about 35 % of the scenes: a line ~10 degrees off north cutting off 15-45 % of the
    tile on its east or west side."""
    rng = rng_for(seed, "swath", tile, date)
    if rng.uniform() >= 0.35:
        return None
    left, bottom, right, top = bounds
    side = 1.0 if rng.uniform() < 0.5 else -1.0  # +1: no data in the east
    angle = math.radians(rng.uniform(6, 14))
    normal = (side * math.cos(angle), side * math.sin(angle))
    cut = rng.uniform(0.15, 0.45)
    x_line = right - cut * (right - left) if side > 0 else left + cut * (right - left)
    centre_y = (top + bottom) / 2
    return normal[0], normal[1], normal[0] * x_line + normal[1] * centre_y


@dataclass
class Surface:
    """Per-pixel state of a strip at 10 m: fractions, opacities and the lighting."""

    elevation: np.ndarray
    water: np.ndarray  # open (unfrozen) water fraction
    snow: np.ndarray  # visible snow fraction of the land (frozen lakes included)
    vegetation: np.ndarray
    texture: np.ndarray  # multiplicative ground texture
    illumination: np.ndarray  # terrain shading times cloud shadow
    cloud: np.ndarray  # thick cloud opacity
    cloud_brightness: np.ndarray
    cirrus: np.ndarray  # thin cloud opacity

    def toa(self) -> np.ndarray:
        """TOA reflectance of all 13 bands, shape (13, rows, cols), float32."""
        clear_part = (1 - self.cirrus) * (1 - self.cloud)
        lit = clear_part * self.illumination
        land = lit * (1 - self.water) * (1 - self.snow) * self.texture
        components = (  # (spectrum, weight map) pairs whose sum is the TOA reflectance
            (PATH_TOA, clear_part),
            (TRANSMISSION * WATER, lit * self.water),
            (TRANSMISSION * SNOW, lit * (1 - self.water) * self.snow),
            (TRANSMISSION * VEGETATION, land * self.vegetation),
            (TRANSMISSION * ROCK, land * (1 - self.vegetation)),
            (CLOUD_TOA, (1 - self.cirrus) * self.cloud * self.cloud_brightness),
            (CIRRUS_TOA, self.cirrus),
        )
        # B10 (1375 nm): water vapour hides the ground except high up, where snow and rock show faintly.
        vapour_window = 0.01 + 0.25 * np.clip((self.elevation - 1000) / 2500, 0, 1)
        surfaces = (WATER, SNOW, VEGETATION, ROCK)
        ground_b10 = sum(np.float32(surface[B10]) * weights for surface, (_, weights) in zip(surfaces, components[1:5]))
        toa = np.zeros((len(BANDS), *self.water.shape), dtype=np.float32)
        term = np.empty(self.water.shape, dtype=np.float32)
        for band in range(len(BANDS)):
            for spectrum, weights in components:
                if spectrum[band]:
                    toa[band] += np.multiply(weights, np.float32(spectrum[band]), out=term)
        toa[B10] += vapour_window * ground_b10
        return toa

    def labels(self) -> np.ndarray:
        """Class per pixel: 0 background, 1 snow, 2 cloud, 3 water, 255 mixed or semi-transparent (not labelled)."""
        low, high = LABEL_MIXED
        opacity = np.maximum(self.cloud, self.cirrus)
        label = np.zeros(self.water.shape, dtype=np.uint8)
        label[self.snow * (1 - self.water) >= 0.5] = 1
        label[self.water >= 0.5] = 3
        mixed = ((self.snow > low) & (self.snow < high)) | ((self.water > low) & (self.water < high))
        label[mixed | (opacity >= LABEL_THIN_CLOUD)] = 255
        label[opacity >= 0.5] = 2
        return label


def render_surface(landscape: Landscape, conditions: Conditions, x: np.ndarray, y: np.ndarray, texture: np.ndarray) -> Surface:
    """The surface state on the grid of pixel-centre coordinates x (columns) and y (rows)."""
    step = float(x[1] - x[0]) if len(x) > 1 else 10.0
    xe = np.concatenate([[x[0] - step], x, [x[-1] + step]])
    ye = np.concatenate([[y[0] + step], y, [y[-1] - step]])
    lakes = landscape.lakes_near(xe.min(), ye.min(), xe.max(), ye.max())
    raw = landscape.raw_elevation_grid(xe, ye)
    extended, water, level = landscape.with_lakes(raw, xe[None, :], ye[:, None], lakes)
    elevation = extended[1:-1, 1:-1]
    water, level = water[1:-1, 1:-1], level[1:-1, 1:-1]

    # Slopes of the full-size landscape (metres per metre) and the sun on them.
    dz_dx = (extended[1:-1, 2:] - extended[1:-1, :-2]) / (2 * step) * landscape.slope_scale
    dz_dy = (extended[:-2, 1:-1] - extended[2:, 1:-1]) / (2 * step) * landscape.slope_scale
    slope = np.arctan(np.hypot(dz_dx, dz_dy))
    aspect = np.arctan2(-dz_dx, -dz_dy)  # direction the slope faces, clockwise from north
    zenith = math.radians(conditions.sun_zenith_deg)
    azimuth = math.radians(conditions.sun_azimuth_deg)
    cos_incidence = math.cos(zenith) * np.cos(slope) + math.sin(zenith) * np.sin(slope) * np.cos(azimuth - aspect)
    direct = np.minimum(np.maximum(cos_incidence, 0) / math.cos(zenith), 2.5) ** 0.7
    sky = (1 + np.cos(slope)) / 2

    cloud_field = conditions.cloud_field.grid(x, y)
    threshold = NormalDist().inv_cdf(1 - conditions.cloud_cover)
    cloud = smoothstep((cloud_field - threshold) / 0.4)
    brightness = 0.85 + 0.25 * np.clip((cloud_field - threshold - 0.4) / 1.0, 0, 1)
    shadow = smoothstep((conditions.cloud_field.shifted(*conditions.shadow_shift_m).grid(x, y) - threshold) / 0.4)
    illumination = (0.2 * sky + 0.8 * direct) * (1 - 0.8 * shadow)
    cirrus = conditions.cirrus_opacity * smoothstep((conditions.cirrus_field.grid(x, y) - 0.6) / 1.2)

    # Snow above the snow line, which is higher on sunny (south-facing) slopes; none on cliffs.
    southness = np.cos(aspect - math.pi) * np.sin(slope)
    snowline = conditions.snowline_m + 120 * conditions.snow_field.grid(x, y) + 300 * southness
    snow = np.clip((elevation - snowline) / SNOW_TRANSITION_M + 0.5, 0, 1)
    snow *= np.clip((math.radians(58) - slope) / math.radians(8), 0, 1)
    treeline = 1800 + 200 * conditions.vegetation_field.grid(x, y)
    vegetation = np.clip((treeline - elevation) / 250, 0, 1)
    snow *= 1 - 0.25 * vegetation  # forest canopy hides part of the snow
    frozen = level > conditions.snowline_m + 150
    snow = np.where(frozen & (water > 0), np.maximum(snow, water), snow)
    water = np.where(frozen, 0, water)
    def f32(array: np.ndarray) -> np.ndarray:
        return array.astype(np.float32, copy=False)

    return Surface(
        elevation=f32(elevation),
        water=f32(water),
        snow=f32(snow),
        vegetation=f32(vegetation),
        texture=f32(texture),
        illumination=f32(illumination),
        cloud=f32(cloud),
        cloud_brightness=f32(brightness),
        cirrus=f32(cirrus),
    )
