"""The synthetic landscape of the demo: analytic terrain with lakes and the ground that covers it (forest,
bright limestone, built-up valley floors), the same on every date.

Two scales (`demo.scale`). "real": the landscape of a whole 109.8 km tile at its real size, with what only
10 m pixels show on top (small lakes, fine relief, sharp and ragged forest edges, snow patches); the demo's
scenes are windows of it (`snowcloud.demo.windows`). "model": a scale model of a full tile drawn at the demo's
size: lengths are fractions of the extent (size x 10 m), so a 384-pixel demo holds the same mountains, lakes
and towns as a 10980-pixel one, only smaller; slopes (for shading, cast shadows and snow on steep faces) are
those of the full-size landscape. Elevations are real metres, and per-pixel effects (sensor noise, ground
texture, mixed pixels at shorelines) are per pixel. The terrain is an analytic function of map coordinates: the
DEM samples it in geographic coordinates, the scene on its UTM grid, and tests can ask for the elevation at any
point.
What changes from date to date (snow, clouds, haze, light) is in `snowcloud.demo.surface`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FULL_EXTENT_M = 109_800.0
SHORE_WIDTH_M = 10.0  # one pixel of mixed land and water along the shore
VALLEY_FLOOR_M = 450.0  # the terrain flattens towards this elevation
SCALES = ("real", "model")  # demo.scale: windows of a real-size tile, or a scale model of the whole tile
# Real scale only: what 10 m pixels show and a scale model smooths away.
SKY_EXTENT_M = 30_000.0  # decks, cirrus streaks and haze are drawn with the sizes they have in a tile this wide
FINE_RELIEF_M = 40.0  # standard deviation of the relief from 100 m to 3 km wavelength (knolls, gullies, benches)
TARN_SPACING_M = 2000.0  # lattice of the small lakes (tarns, ponds): about one in two cells holds one
TARN_RADIUS_M = (60.0, 400.0)
FOREST_EDGE_M = 30.0  # elevation over which the forest ends at the tree line (a scale model: 250 m)
FOREST_RAGGEDNESS_M = 80.0  # how far stands and clearings move the tree line up and down (100 m - 1.5 km)
SNOW_PATCHES_M = 40.0  # how far drifts and wind-blown patches move the snow line (50 m - 1 km)


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
class LakeLattice:
    """Where lakes of one kind may lie: one random stream, a lattice of cells, each holding one lake or none."""

    name: str  # of the random stream
    spacing: float  # metres between cells
    radius: tuple[float, float]  # smallest and largest mean radius (m)
    basin_depth: float  # a lake's centre lies at most this far above its level (m): it lies in a depression

    @property
    def reach(self) -> float:
        """Metres from a cell's lakes beyond which they change nothing: 1.6 radii x the largest shore bulge."""
        return 2.0 * self.radius[1]


@dataclass(frozen=True)
class Lake:
    """A lake in a depression: flat water at `level` inside an irregular shoreline around (x, y)."""

    x: float
    y: float
    radius: float
    level: float
    harmonics: tuple[tuple[int, float, float], ...]  # (order, relative amplitude, phase) of the shoreline
    turbidity: float  # 0 clear .. 1 loaded with glacial flour or river sediment

    def distance_and_shore(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distance of each point from the centre, and the shoreline radius in its direction."""
        dx, dy = x - self.x, y - self.y
        angle = np.arctan2(dy, dx)
        shore = np.full(np.broadcast(dx, dy).shape, self.radius)
        for order, amplitude, phase in self.harmonics:
            shore *= 1 + amplitude * np.cos(order * angle + phase)
        return np.hypot(dx, dy), shore


@dataclass
class LakeMaps:
    """The lakes on a set of points (arrays of one shape)."""

    elevation: np.ndarray  # the terrain with the lakes cut in
    water: np.ndarray  # lake share of each pixel, 0..1 (mixed over one pixel along the shore)
    level: np.ndarray  # lake level (m); NaN away from lakes
    inward: np.ndarray  # metres from the shore towards the centre (negative on land); NaN away from lakes
    radius: np.ndarray  # mean radius of the lake (m); NaN away from lakes
    turbidity: np.ndarray  # of the lake's water; 0 away from lakes


class Landscape:
    """Terrain, lakes and ground cover of a demo: one continuous landscape for every tile of the same seed and
    size."""

    def __init__(self, seed: int, size: int, scale: str = "model") -> None:
        """The landscape of demo.seed, demo.size and demo.scale: at "real" scale the size does not change it."""
        if scale not in SCALES:
            raise ValueError(f"demo.scale: '{scale}' is none of {', '.join(SCALES)}")
        self.seed = seed
        self.scale = scale
        self.extent = FULL_EXTENT_M if scale == "real" else size * 10.0
        self.slope_scale = self.extent / FULL_EXTENT_M  # converts demo gradients into full-size slopes
        # A window a few km wide of a tile-wide deck or cirrus streak would be all cloud or none.
        self.sky_extent = SKY_EXTENT_M if scale == "real" else self.extent
        rng = rng_for(seed, "terrain")
        length = self.extent
        self.massifs = WaveField.random(rng, 24, (length / 3, 2 * length), 1.0)
        self.ridges = WaveField.random(rng, 32, (length / 16, length / 3), 1.0)
        self.detail = WaveField.random(rng, 32, (length / 50, length / 10), 1.5)
        ground = rng_for(seed, "ground")
        self.snow_drift = WaveField.random(ground, 16, (length / 25, length / 2), 1.0)  # wind, avalanches
        self.treeline = WaveField.random(ground, 16, (length / 40, length / 3), 1.0)
        self.lithology = WaveField.random(ground, 16, (length / 30, length / 4), 1.0)
        self.towns = WaveField.random(ground, 24, (length / 80, length / 10), 1.0)
        self.lattices = [LakeLattice("lake", 0.3 * length, (0.015 * length, 0.045 * length), 150.0)]
        self._lakes: dict[tuple[str, int, int], Lake | None] = {}
        self.fine_relief = self.stands = self.snow_patches = None
        if scale == "real":
            fine = rng_for(seed, "fine")
            self.fine_relief = WaveField.random(fine, 32, (100.0, 3000.0), 1.0)
            self.stands = WaveField.random(fine, 24, (100.0, 1500.0), 0.7)
            self.snow_patches = WaveField.random(fine, 24, (50.0, 1000.0), 0.7)
            self.lattices.append(LakeLattice("tarn", TARN_SPACING_M, TARN_RADIUS_M, 40.0))

    def raw_elevation(
        self, massifs: np.ndarray, ridges: np.ndarray, detail: np.ndarray, fine: np.ndarray | float = 0.0
    ) -> np.ndarray:
        """Elevation (m) from the unit fields: massifs, sharp ridges, detail (and the fine relief at real scale);
        valley floors flattened near 450 m. Slopes of the full-size landscape: median ~12 degrees, 10 % steeper
        than 25, 1 % steeper than 35."""
        elevation = 1350 + 650 * massifs + 1000 * (0.5 - np.abs(ridges)) + 200 * detail + FINE_RELIEF_M * fine
        softness = 80.0
        return VALLEY_FLOOR_M + softness * np.logaddexp(0.0, (elevation - VALLEY_FLOOR_M) / softness)

    def _relief_fields(self) -> list[WaveField]:
        fields = [self.massifs, self.ridges, self.detail]
        return fields if self.fine_relief is None else [*fields, self.fine_relief]

    def raw_elevation_points(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.raw_elevation(*(field.points(x, y) for field in self._relief_fields()))

    def raw_elevation_grid(self, x: np.ndarray, y: np.ndarray, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        """The raw elevation on a grid, seen from points displaced by `shift` (dx, dy) metres."""
        return self.raw_elevation(*(field.shifted(*shift).grid(x, y) for field in self._relief_fields()))

    def lake_in_cell(self, i: int, j: int, lattice: LakeLattice | None = None) -> Lake | None:
        """The lake (if any) of cell (i, j) of a lattice (the large lakes by default): about half the cells
        hold one, in their lowest part."""
        lattice = lattice or self.lattices[0]
        key = (lattice.name, i, j)
        if key not in self._lakes:
            rng = rng_for(self.seed, lattice.name, i % 2**32, j % 2**32)
            exists, u, v, size = rng.uniform(size=4)
            lake = None
            if exists < 0.55:
                x = (i + 0.25 + 0.5 * u) * lattice.spacing
                y = (j + 0.25 + 0.5 * v) * lattice.spacing
                radius = lattice.radius[0] + (lattice.radius[1] - lattice.radius[0]) * size
                angles = np.linspace(0, 2 * np.pi, 32, endpoint=False)
                ring_x = np.append(x + 1.6 * radius * np.cos(angles), x)  # the ring around the lake, and its centre
                ring_y = np.append(y + 1.6 * radius * np.sin(angles), y)
                *ring, centre = self.raw_elevation_points(ring_x, ring_y)
                harmonics = tuple(
                    (order, float(rng.uniform(0.05, 0.25) / order), float(rng.uniform(0, 2 * np.pi)))
                    for order in (2, 3, 5)
                )
                turbidity = float(rng.uniform() ** 3)  # most lakes clear, a few milky
                level = float(min(ring)) - 2.0
                in_basin = float(centre) < level + lattice.basin_depth
                lake = Lake(x, y, radius, level, harmonics, turbidity) if in_basin and level < 2600 else None
            self._lakes[key] = lake
        return self._lakes[key]

    def lakes_near(self, left: float, bottom: float, right: float, top: float) -> list[Lake]:
        """Lakes whose surroundings (1.6 radii) reach into the box."""
        lakes = []
        for lattice in self.lattices:
            reach, spacing = lattice.reach, lattice.spacing
            cells_x = range(math.floor((left - reach) / spacing), math.floor((right + reach) / spacing) + 1)
            cells_y = range(math.floor((bottom - reach) / spacing), math.floor((top + reach) / spacing) + 1)
            lakes += [self.lake_in_cell(i, j, lattice) for i in cells_x for j in cells_y]
        return [lake for lake in lakes if lake is not None]

    def with_lakes(self, elevation: np.ndarray, x: np.ndarray, y: np.ndarray, lakes: list[Lake]) -> LakeMaps:
        """Cut the lakes into the raw elevation at points (x, y) (arrays broadcasting to its shape).

        Inside the shoreline the surface is the flat lake level; around it the terrain is lowered smoothly
        towards the level, so each lake lies in a depression. The water share falls from 1 to 0 over one
        pixel at the shore (mixed pixels).
        """
        shape = elevation.shape
        maps = LakeMaps(
            elevation=elevation.astype(np.float32),  # a copy
            water=np.zeros(shape, dtype=np.float32),
            level=np.full(shape, np.nan, dtype=np.float32),
            inward=np.full(shape, np.nan, dtype=np.float32),
            radius=np.full(shape, np.nan, dtype=np.float32),
            turbidity=np.zeros(shape, dtype=np.float32),
        )
        for lake in lakes:
            reach = 1.6 * lake.radius * np.prod([1 + amplitude for _, amplitude, _ in lake.harmonics])
            box = np.nonzero((np.abs(x - lake.x) < reach) & (np.abs(y - lake.y) < reach))
            if not box[0].size:
                continue
            px = np.broadcast_to(x, shape)[box]
            py = np.broadcast_to(y, shape)[box]
            height = maps.elevation[box]
            distance, shore = lake.distance_and_shore(px, py)
            ramp = smoothstep((distance - shore) / (0.6 * shore))
            lowered = np.maximum(lake.level + (height - lake.level) * ramp, lake.level)
            height = np.where(distance < 1.6 * shore, np.minimum(height, lowered), height)
            maps.elevation[box] = np.where(distance < shore, lake.level, height)
            fraction = np.clip((shore - distance) / SHORE_WIDTH_M + 0.5, 0, 1)
            here = fraction > 0
            maps.level[box] = np.where(here, lake.level, maps.level[box])
            maps.inward[box] = np.where(here, shore - distance, maps.inward[box])
            maps.radius[box] = np.where(here, lake.radius, maps.radius[box])
            maps.turbidity[box] = np.where(here, lake.turbidity, maps.turbidity[box])
            maps.water[box] = np.maximum(maps.water[box], fraction)
        return maps

    def elevation_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Elevation (m) at map coordinates (metres in the tile's UTM zone), lakes included: what the DEM holds."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        lakes = self.lakes_near(float(x.min()), float(y.min()), float(x.max()), float(y.max())) if x.size else []
        return self.with_lakes(self.raw_elevation_points(x, y), x, y, lakes).elevation

    def ground_cover(
        self, x: np.ndarray, y: np.ndarray, elevation: np.ndarray, slope: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shares of the snow-free land on the grid (x columns, y rows): (built, vegetation, limestone).

        Towns lie on flat valley floors and cover the ground whole (built); forest and meadows cover the rest
        below a tree line near 1800 m and thin out on slopes steeper than 25 degrees (vegetation, a share of what is
        not built); elsewhere rock shows, bright limestone in about half the landscape (limestone, a share of the
        rock).
        """
        flat = np.clip((math.radians(8) - slope) / math.radians(4), 0, 1)
        low = np.clip((VALLEY_FLOOR_M + 300 - elevation) / 150, 0, 1)
        built = smoothstep((self.towns.grid(x, y) - 1.0) / 0.6) * flat * low
        treeline = 1800 + 200 * self.treeline.grid(x, y)
        edge = 250.0
        if self.stands is not None:  # real scale: stands and clearings make a sharp, ragged forest edge
            treeline += FOREST_RAGGEDNESS_M * self.stands.grid(x, y)
            edge = FOREST_EDGE_M
        vegetation = np.clip((treeline - elevation) / edge, 0, 1)
        vegetation *= np.clip((math.radians(40) - slope) / math.radians(15), 0, 1)  # rock shows on steep slopes
        limestone = smoothstep(self.lithology.grid(x, y) / 0.8 + 0.5)
        return built, vegetation, limestone

    def snow_drift_m(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """How far wind, avalanches (and at real scale drifts and wind-blown patches) move the snow line (m)."""
        drift = 120 * self.snow_drift.grid(x, y)
        if self.snow_patches is not None:
            drift += SNOW_PATCHES_M * self.snow_patches.grid(x, y)
        return drift


def smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0, 1)
    return t * t * (3 - 2 * t)
