"""What a demo scene shows on its date: snow, frozen lakes, clouds of both phases, cirrus, haze, the light of the
sun and the sky with terrain and cloud shadows; and from them the TOA reflectance of all 13 bands and the label
a human annotator would give each pixel.

The spectra and the atmosphere are in `snowcloud.demo.spectra`; docs/demo.md explains every effect and why it is
there (most are what makes fixed per-pixel rules fail on real winter scenes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from statistics import NormalDist

import numpy as np

from snowcloud.bands import BANDS
from snowcloud.demo import clouds, spectra
from snowcloud.demo.landscape import SHORE_WIDTH_M, VALLEY_FLOOR_M, Landscape, WaveField, rng_for, smoothstep

SNOW_TRANSITION_M = 60.0  # elevation over which the snow share goes from 0 to 1 across the snow line
STEEP_FACE_DEG = (38.0, 48.0)  # full-size slopes over which snow slides off: all snow below, none above
LAKE_ICE_REACH = 1.3  # radii from the shore that the ice of a lake reaches once it is frozen
YOUNG_ICE_WIDTH = 0.3  # radii of the newest ice along the open water: bare; older ice carries snow
CLOUD_SHADOW_DIRECT = 0.9  # share of the direct beam an opaque cloud stops
CLOUD_SHADOW_DIFFUSE = 0.3  # share of the sky light it stops
SHADOW_STEPS = 16  # samples along the way to the sun when looking for terrain that casts a shadow
SHADOW_SAMPLE_M = 100.0  # full-size spacing of the lattice on which the horizon is computed
SHADOW_RELIEF_M = 2500.0  # the most terrain can rise above a point towards the sun
PENUMBRA_M = 40.0  # relief over which a cast shadow goes from lit to dark (the sun's disc, smoothing)
LABEL_MIXED = (0.3, 0.7)  # snow or water shares between these leave a pixel unlabelled (255)
LABEL_CLOUD = (0.12, 0.3)  # cloud opacity from which a pixel is unlabelled (below 0.3) or cloud (from 0.3)
LABEL_THIN = 0.7  # with thin clouds labelled: cloud opacity below which a cloud pixel is thin (semi-transparent)
LABEL_THIN_CLOUD = 4  # the thesis's class 4, semi-transparent clouds
CUMULUS_DATES = 0.7  # share of the dates with a field of broken cumulus
DENSE_CUMULUS_DATES = 0.75  # share of the cumulus dates whose field is dense (convection: cumulus congestus)
CUMULUS_DECK_SHARE = 0.5  # on those dates the sky has broken up: decks cover half as much
CIRRUS_SHEET_DATES = 0.4  # share of the dates with a thin cirrus sheet


@dataclass(frozen=True)
class Conditions:
    """What changes from date to date: season (snow line, sun), clouds, haze, and the swath edge of one scene."""

    snowline_m: float
    sun_zenith_deg: float
    sun_azimuth_deg: float
    cloud_cover: float
    cloud_field: WaveField
    shadow_shift_m: tuple[float, float]
    cirrus_opacity: float
    cirrus_field: WaveField
    cirrus_sheet: float  # opacity of a thin cirrus sheet (0: none)
    sheet_field: WaveField
    cumulus: clouds.CumulusField | None  # a field of broken cumulus, or none
    roughness: WaveField  # fractal roughness of cloud edges (real metres)
    ice_share: float  # share of the thick cloud area that is ice-phase
    phase_field: WaveField
    crystal_field: WaveField  # crystal size of ice clouds: large crystals absorb more at 1.6 um
    aerosol_depth: float  # regional aerosol optical depth at 550 nm
    valley_haze: float  # extra optical depth of the haze trapped on valley floors (winter inversions)
    haze_field: WaveField
    swath_edge: tuple[float, float, float] | None  # unit normal (nx, ny) and offset c: valid where n.(x, y) < c

    @classmethod
    def for_scene(
        cls, seed: int, tile: str, date: str, landscape: Landscape, bounds: tuple[float, float, float, float]
    ) -> Conditions:
        """Conditions of one scene, from the seed, the date (season, clouds, haze: shared by the tiles of one pass)
        and the tile (swath edge)."""
        when = datetime.strptime(date, "%Y%m%dT%H%M%S")
        day = when.timetuple().tm_yday
        extent = landscape.sky_extent  # cloud systems, haze: scaled like the landscape, or real
        season = rng_for(seed, "season", date)
        snowline = seasonal_snowline_m(date) + season.normal(0, 60)
        declination = -23.44 * math.cos(2 * math.pi * (day + 10) / 365)
        latitude = 46.5
        zenith = abs(latitude - declination) + 6.0
        azimuth = 158.0
        cover = float(season.uniform(0.08, 0.5))
        decks = WaveField.random(season, 24, (extent / 20, 1.5 * extent), 0.9)
        height = season.uniform(1500, 4000) * landscape.slope_scale
        along = height * math.tan(math.radians(zenith))
        # The shadow of a cloud falls away from the sun: the shadow at p is cast by the cloud at p + shift.
        shift = (along * math.sin(math.radians(azimuth)), along * math.cos(math.radians(azimuth)))
        cirrus = float(season.uniform(0.3, 0.65)) if season.uniform() < 0.6 else 0.0
        streaks = WaveField.random(season, 24, (extent / 20, 1.5 * extent), 1.0, (season.uniform(0, math.pi), 0.5))
        sky = rng_for(seed, "cumulus", date)  # apart from `season`: the decks stay those of earlier versions
        has_cumulus, has_sheet = sky.uniform(size=2) < (CUMULUS_DATES, CIRRUS_SHEET_DATES)
        cumulus = clouds.CumulusField.random(seed, date, sky)
        # Dense fields at real scale only (the scale model keeps its skies); apart from `sky`: the other clouds stay.
        convection = rng_for(seed, "convection", date)
        if landscape.scale == "real" and convection.uniform() < DENSE_CUMULUS_DATES:
            cumulus = cumulus.dense(convection)
        sheet = float(sky.uniform(0.04, 0.11))
        return cls(
            snowline_m=snowline,
            sun_zenith_deg=zenith,
            sun_azimuth_deg=azimuth,
            cloud_cover=cover * (CUMULUS_DECK_SHARE if has_cumulus else 1.0),
            cloud_field=decks,
            shadow_shift_m=shift,
            cirrus_opacity=cirrus,
            cirrus_field=streaks,
            cirrus_sheet=sheet if has_sheet else 0.0,
            sheet_field=WaveField.random(sky, 16, (extent / 4, 2 * extent), 1.0),
            cumulus=cumulus if has_cumulus else None,
            roughness=clouds.roughness_field(sky),
            ice_share=float(season.uniform(0.1, 0.5)),
            phase_field=WaveField.random(season, 16, (extent / 15, extent), 1.0),
            crystal_field=WaveField.random(season, 16, (extent / 30, extent / 3), 1.0),
            aerosol_depth=float(season.uniform(0.02, 0.08)),
            valley_haze=float(season.uniform(0.0, 0.2)),
            haze_field=WaveField.random(season, 16, (extent / 10, extent), 1.0),
            swath_edge=swath_edge(seed, tile, date, bounds),
        )


def seasonal_snowline_m(date: str) -> float:
    """The snow line of the season (m): about 900 m in late January, 2500 m in late July; a date varies by
    +-60 m around it."""
    day = datetime.strptime(date, "%Y%m%dT%H%M%S").timetuple().tm_yday
    return 1700 - 800 * math.cos(2 * math.pi * (day - 20) / 365)


def cumulus_shadow_shift(conditions: Conditions) -> tuple[float, float]:
    """Where the cumulus that shades a point lies, relative to it (real metres: towards the sun)."""
    along = conditions.cumulus.height_m * math.tan(math.radians(conditions.sun_zenith_deg))
    azimuth = math.radians(conditions.sun_azimuth_deg)
    return along * math.sin(azimuth), along * math.cos(azimuth)


def swath_edge(
    seed: int, tile: str, date: str, bounds: tuple[float, float, float, float]
) -> tuple[float, float, float] | None:
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
    """Per-pixel state of a strip at 10 m: shares of each surface, cloud opacities, haze and the light."""

    elevation: np.ndarray
    water: np.ndarray  # open water share
    turbidity: np.ndarray  # of that water
    snow: np.ndarray  # snow share: on land (the visible part under forest) and on lake ice
    ice: np.ndarray  # bare lake ice share (labelled snow: the snow class is snow and ice)
    built: np.ndarray  # the rest of the pixel is ground: built share,
    vegetation: np.ndarray  # vegetated share of the unbuilt ground,
    limestone: np.ndarray  # bright limestone share of the bare rock
    texture: np.ndarray  # multiplicative ground texture
    direct: np.ndarray  # sun's direct beam relative to flat open ground (incidence, terrain and cloud shadows)
    diffuse: np.ndarray  # sky light relative to flat open ground (sky view, cloud shadow)
    aerosol: np.ndarray  # aerosol optical depth at 550 nm
    cloud: np.ndarray  # opacity of the decks and cumulus (clouds.opacity of their optical depth)
    ice_phase: np.ndarray  # ice share of that cloud
    crystals: np.ndarray  # 0 small .. 1 large ice crystals
    cloud_brightness: np.ndarray
    cirrus: np.ndarray  # thin ice cloud opacity

    def toa(self) -> np.ndarray:
        """TOA reflectance of all 13 bands, shape (13, rows, cols), float32.

        Per band: clear-sky part x (path radiance of air and aerosol + transmission x light x surface
        reflectance) + the clouds' own reflectance. The light mixes the direct beam and the sky light by the
        band's diffuse share, so shadows are dark and blue; haze adds path radiance and dims the surface.
        """
        shape = self.water.shape
        ground = (1 - self.water - self.snow - self.ice) * self.texture
        unbuilt = ground * (1 - self.built)
        rock = unbuilt * (1 - self.vegetation)
        surface_weights = (  # in spectra.SURFACES order
            self.water * (1 - self.turbidity),
            self.water * self.turbidity,
            self.snow,
            self.ice,
            unbuilt * self.vegetation,
            rock * (1 - self.limestone),
            rock * self.limestone,
            ground * self.built,
        )
        thick = (1 - self.cirrus) * self.cloud * self.cloud_brightness
        cloud_weights = (  # in spectra.CLOUDS order
            thick * (1 - self.ice_phase),
            thick * self.ice_phase * (1 - self.crystals),
            thick * self.ice_phase * self.crystals,
            self.cirrus,
        )
        toa = mix(spectra.SURFACE_SPECTRA, surface_weights)
        clear = (1 - self.cirrus) * (1 - self.cloud)
        # B10 (1375 nm): water vapour hides the ground except high up, where snow and rock show faintly.
        vapour_window = 0.01 + 0.25 * np.clip((self.elevation - 1000) / 2500, 0, 1)
        light = np.empty(shape, dtype=np.float32)
        for band in range(len(BANDS)):
            np.subtract(self.diffuse, self.direct, out=light)
            light *= np.float32(spectra.DIFFUSE_FRACTION[band])
            light += self.direct
            transmission = vapour_window if band == spectra.B10 else np.float32(spectra.TRANSMISSION[band])
            toa[band] *= light * transmission * np.exp(-np.float32(spectra.AEROSOL_DEPTH[band]) * self.aerosol)
            toa[band] += np.float32(spectra.PATH[band]) + np.float32(spectra.AEROSOL_PATH[band]) * self.aerosol
            toa[band] *= clear
        toa += mix(spectra.CLOUD_SPECTRA, cloud_weights)
        return toa

    def labels(self, thin_clouds: bool = False) -> np.ndarray:
        """Class per pixel as an annotator would draw it: 0 background, 1 snow (and ice), 2 cloud (thin cloud
        and cirrus too), 3 open water; 255 where unsure: mixed pixels, cloud edges. Shadow and haze change
        nothing: snow in shadow is snow. With `thin_clouds`, semi-transparent cloud (opacity 0.3-0.7) is 4."""
        low, high = LABEL_MIXED
        opacity = np.maximum(self.cloud, self.cirrus)
        frozen = self.snow + self.ice
        label = np.zeros(self.water.shape, dtype=np.uint8)
        label[frozen >= 0.5] = 1
        label[self.water >= 0.5] = 3
        mixed = ((frozen > low) & (frozen < high)) | ((self.water > low) & (self.water < high))
        label[mixed | (opacity >= LABEL_CLOUD[0])] = 255
        label[opacity >= LABEL_CLOUD[1]] = 2
        if thin_clouds:
            label[(opacity >= LABEL_CLOUD[1]) & (opacity < LABEL_THIN)] = LABEL_THIN_CLOUD
        return label


def mix(spectra_by_band: np.ndarray, weights: tuple[np.ndarray, ...]) -> np.ndarray:
    """sum_k spectra[:, k] * weights[k]: (13, K) spectra and K maps -> (13, rows, cols) float32."""
    stacked = np.stack(weights).astype(np.float32, copy=False)
    flat = spectra_by_band.astype(np.float32) @ stacked.reshape(len(weights), -1)
    return flat.reshape(len(spectra_by_band), *stacked.shape[1:])


def cast_shadow(
    landscape: Landscape, x: np.ndarray, y: np.ndarray, raw_elevation: np.ndarray, zenith_deg: float, azimuth_deg: float
) -> np.ndarray:
    """0 (lit) .. 1 (in shadow): whether terrain between each point of the grid (x columns, y rows) and the sun
    rises above the sun's elevation. Lakes are left out on both sides of the comparison (`raw_elevation`: the
    terrain without them).

    The horizon (`horizon_height`) is smooth, so it is computed on a lattice about SHADOW_SAMPLE_M apart (at
    full size; every pixel for small demos) and interpolated; the comparison with the point's own elevation is
    made per pixel, so shadow edges stay sharp. The lattice is anchored to map coordinates: strips join.
    """
    step = abs(float(x[1] - x[0])) if len(x) > 1 else 10.0
    factor = max(1, int(SHADOW_SAMPLE_M * landscape.slope_scale // step))
    sun = (zenith_deg, azimuth_deg)
    if factor == 1:
        horizon = horizon_height(landscape, x, y, *sun, nearest=2 * step)
    else:
        xs, kx, wx = lattice(x, factor * step)
        ys, ky, wy = lattice(y, factor * step)
        coarse = horizon_height(landscape, xs, ys, *sun, nearest=2 * step)
        along_rows = coarse[ky] * (1 - wy)[:, None] + coarse[ky + 1] * wy[:, None]
        horizon = along_rows[:, kx] * (1 - wx) + along_rows[:, kx + 1] * wx
    return smoothstep((horizon - raw_elevation) / PENUMBRA_M + 0.5)


def horizon_height(
    landscape: Landscape, x: np.ndarray, y: np.ndarray, zenith_deg: float, azimuth_deg: float, nearest: float
) -> np.ndarray:
    """The height the sun's ray through each grid point must clear: max over points towards the sun (from
    `nearest` demo metres to where SHADOW_RELIEF_M of relief could still shade) of their elevation minus the
    ray's rise. Heights along the way come from shifted copies of the analytic terrain, one grid per step."""
    tan_sun = math.tan(math.radians(90 - zenith_deg))
    towards_sun = (math.sin(math.radians(azimuth_deg)), math.cos(math.radians(azimuth_deg)))
    nearest_full = nearest / landscape.slope_scale  # closer terrain is the point's own slope (incidence)
    farthest = max(SHADOW_RELIEF_M / tan_sun, nearest_full)  # full-size metres
    horizon = np.full((len(y), len(x)), -np.inf, dtype=np.float32)
    for i in range(SHADOW_STEPS):
        distance = nearest_full + (farthest - nearest_full) * (i / (SHADOW_STEPS - 1)) ** 1.5
        shift = distance * landscape.slope_scale
        ahead = landscape.raw_elevation_grid(x, y, (shift * towards_sun[0], shift * towards_sun[1]))
        np.maximum(horizon, ahead - np.float32(distance * tan_sun), out=horizon)
    return horizon


def lattice(coords: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample coordinates at multiples of `spacing` bracketing `coords`, and for each coordinate the index of the
    sample below it and its weight towards the next: linear interpolation from the lattice."""
    position = np.asarray(coords, dtype=np.float64) / spacing
    first = math.floor(position.min())
    last = max(math.ceil(position.max()), first + 1)
    index = np.minimum(np.floor(position).astype(np.int64) - first, last - first - 1)
    weight = (position - first - index).astype(np.float32)
    return np.arange(first, last + 1) * spacing, index, weight


def render_surface(
    landscape: Landscape, conditions: Conditions, x: np.ndarray, y: np.ndarray, texture: np.ndarray
) -> Surface:
    """The surface state on the grid of pixel-centre coordinates x (columns) and y (rows)."""
    step = float(x[1] - x[0]) if len(x) > 1 else 10.0
    xe = np.concatenate([[x[0] - step], x, [x[-1] + step]])
    ye = np.concatenate([[y[0] + step], y, [y[-1] - step]])
    lakes = landscape.lakes_near(xe.min(), ye.min(), xe.max(), ye.max())
    raw = landscape.raw_elevation_grid(xe, ye)
    maps = landscape.with_lakes(raw, xe[None, :], ye[:, None], lakes)
    extended = maps.elevation
    inner = (slice(1, -1), slice(1, -1))
    elevation, lake, level = extended[inner], maps.water[inner], maps.level[inner]

    # Slopes of the full-size landscape (metres per metre) and the sun on them.
    dz_dx = (extended[1:-1, 2:] - extended[1:-1, :-2]) / (2 * step) * landscape.slope_scale
    dz_dy = (extended[:-2, 1:-1] - extended[2:, 1:-1]) / (2 * step) * landscape.slope_scale
    slope = np.arctan(np.hypot(dz_dx, dz_dy))
    aspect = np.arctan2(-dz_dx, -dz_dy)  # direction the slope faces, clockwise from north
    zenith = math.radians(conditions.sun_zenith_deg)
    azimuth = math.radians(conditions.sun_azimuth_deg)
    cos_incidence = math.cos(zenith) * np.cos(slope) + math.sin(zenith) * np.sin(slope) * np.cos(azimuth - aspect)
    direct = np.minimum(np.maximum(cos_incidence, 0) / math.cos(zenith), 2.5) ** 0.7
    direct *= 1 - cast_shadow(landscape, x, y, raw[inner], conditions.sun_zenith_deg, conditions.sun_azimuth_deg)
    sky = (1 + np.cos(slope)) / 2

    # Clouds: decks of water or ice and broken cumulus (water), their shadows, cirrus streaks and sheets.
    roughness = conditions.roughness.grid(x, y)
    threshold = NormalDist().inv_cdf(1 - conditions.cloud_cover)
    cloud_field = conditions.cloud_field.grid(x, y)
    deck = clouds.deck_depth(cloud_field, roughness, threshold)
    brightness = 0.85 + 0.25 * np.clip((cloud_field - threshold - 0.4) / 1.0, 0, 1)
    dx, dy = conditions.shadow_shift_m
    deck_above = conditions.cloud_field.shifted(dx, dy).grid(x, y)  # the deck that shades each point
    shading = [clouds.deck_depth(deck_above, conditions.roughness.shifted(dx, dy).grid(x, y), threshold)]
    cumulus = np.zeros_like(deck)
    if conditions.cumulus is not None:
        cumulus = conditions.cumulus.depth(x, y, roughness)
        sx, sy = cumulus_shadow_shift(conditions)
        shading.append(conditions.cumulus.depth(x + sx, y + sy, conditions.roughness.shifted(sx, sy).grid(x, y)))
    shadow = 1 - np.prod([1 - clouds.shadow_depth(tau, conditions.sun_zenith_deg) for tau in shading], axis=0)
    depth = deck + cumulus
    cloud = clouds.opacity(depth)
    deck_share = np.divide(deck, depth, out=np.ones_like(depth), where=depth > 0)
    brightness = deck_share * brightness + (1 - deck_share)
    direct *= 1 - CLOUD_SHADOW_DIRECT * shadow
    diffuse = sky * (1 - CLOUD_SHADOW_DIFFUSE * shadow)
    streaks = conditions.cirrus_opacity * smoothstep((conditions.cirrus_field.grid(x, y) - 0.6) / 1.2)
    sheet = clouds.cirrus_sheet(conditions.sheet_field.grid(x, y), roughness, conditions.cirrus_sheet)
    cirrus = np.maximum(streaks, sheet)
    ice_threshold = NormalDist().inv_cdf(1 - conditions.ice_share)
    ice_phase = smoothstep((conditions.phase_field.grid(x, y) - ice_threshold) / 0.6 + 0.5)
    crystals = smoothstep(conditions.crystal_field.grid(x, y) / 1.2 + 0.5)
    haze = conditions.haze_field.grid(x, y)
    valley = np.exp(-(elevation - VALLEY_FLOOR_M) / 500)
    aerosol = np.maximum(
        conditions.aerosol_depth * (1 + 0.4 * haze) + conditions.valley_haze * valley * (0.6 + 0.4 * haze), 0
    )

    # Snow above the snow line, which is higher on sunny (south-facing) slopes; none on steep faces.
    southness = np.cos(aspect - math.pi) * np.sin(slope)
    snowline = conditions.snowline_m + landscape.snow_drift_m(x, y) + 300 * southness
    snow = np.clip((elevation - snowline) / SNOW_TRANSITION_M + 0.5, 0, 1)
    low_face, high_face = (math.radians(angle) for angle in STEEP_FACE_DEG)
    snow *= np.clip((high_face - slope) / (high_face - low_face), 0, 1)
    built, vegetation, limestone = landscape.ground_cover(x, y, elevation, slope)
    snow *= 1 - 0.25 * vegetation  # forest canopy hides part of the snow

    # Lakes freeze from the shore inwards once they lie near or above the snow line; the newest ice is bare.
    freeze = np.nan_to_num(smoothstep((level - conditions.snowline_m + 100) / 300))
    radius = np.nan_to_num(maps.radius[inner])
    into_ice = LAKE_ICE_REACH * freeze * radius - np.nan_to_num(maps.inward[inner])  # metres from the ice edge
    frozen = np.where(freeze > 0, np.clip(into_ice / SHORE_WIDTH_M + 0.5, 0, 1), 0)
    snowy_ice = np.minimum(frozen, np.clip((into_ice - YOUNG_ICE_WIDTH * radius) / SHORE_WIDTH_M + 0.5, 0, 1))

    def f32(array: np.ndarray) -> np.ndarray:
        return array.astype(np.float32, copy=False)

    return Surface(
        elevation=f32(elevation),
        water=f32(lake * (1 - frozen)),
        turbidity=f32(maps.turbidity[inner]),
        snow=f32((1 - lake) * snow + lake * snowy_ice),
        ice=f32(lake * (frozen - snowy_ice)),
        built=f32(built),
        vegetation=f32(vegetation),
        limestone=f32(limestone),
        texture=f32(texture),
        direct=f32(direct),
        diffuse=f32(diffuse),
        aerosol=f32(aerosol),
        cloud=f32(cloud),
        ice_phase=f32(ice_phase * deck_share),
        crystals=f32(crystals),
        cloud_brightness=f32(brightness),
        cirrus=f32(cirrus),
    )
