"""Cloud morphology of the demo: optical depth and opacity, fields of small broken cumulus (heavy-tailed sizes,
cloud streets, fractal edges with thin margins) and the optical depth of the large decks.

Clouds are described by their optical depth tau; what a pixel shows of them is their opacity: the two-stream
reflectance of a conservatively scattering layer, relative to the opaque layer the cloud spectra in
`snowcloud.demo.spectra` stand for. The rest of the pixel shows the surface (docs/demo.md: thin margins).
Cumulus are drawn at their real size (metres at 10 m pixels, like sensor noise), not scaled with the landscape:
what a model must learn is what a 10 m pixel of a small cloud looks like. The targeted statistics and their
sources are in docs/demo.md; `snowcloud.demo.cloudstats` measures them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from snowcloud.demo.landscape import WaveField, rng_for, smoothstep

ASYMMETRY = 0.85  # asymmetry parameter g of cloud droplets and crystals in the visible (strong forward scattering)
OPAQUE_TAU = 40.0  # optical depth of the opaque layer whose reflectance the cloud spectra give
THIN_BELOW = 0.7  # opacity under which a cloud is semi-transparent: the surface shows through (tau ~ 12)
LABEL_TAU = 3.0  # optical depth at a cumulus's nominal edge: opacity 0.3, where the annotator's line runs
CUMULUS_DIAMETER_M = (20.0, 1000.0)  # smallest and largest cumulus (nominal diameter, real metres)
CUMULUS_COVER = (0.1, 0.3)  # labelled share of a fair-weather field (Wielicki and Welch 1986: 10-40 %)
DENSE_DIAMETER_M = (100.0, 800.0)  # cells of a dense field (spring and summer afternoons: cumulus congestus)
DENSE_COVER = (0.3, 0.7)
CUMULUS_SIZE_SLOPE = 1.8  # number density n(D) ~ D^-b of cumulus diameters (Sengupta et al. 1990: 1.4-2.3 below 1 km)
CUMULUS_CORE_TAU = (4.0, 60.0)  # optical depth at the centre: thin for small clouds, rising with size
CUMULUS_CELL_M = 1000.0  # cumulus are drawn per cell of a map lattice: strips and tiles of one date agree
EDGE_ROUGHNESS = 0.25  # how far (in radii) the fractal roughness moves a cumulus's edge in or out
HARMONIC_ORDERS = np.array([2.0, 3.0, 5.0])  # of the irregular outline of a cumulus
DECK_TAU = 60.0  # optical depth deep inside a deck
DECK_EDGE = 0.4  # excess of the deck field over its threshold across which a deck's edge thickens
DECK_ROUGHNESS = 0.2  # the fractal roughness added to a deck's edge (in units of DECK_EDGE)


def scaled_depth(tau: np.ndarray) -> np.ndarray:
    """Two-stream scaled optical depth 3/4 (1 - g) tau: what decides reflectance and diffuse transmission."""
    return 0.75 * (1 - ASYMMETRY) * tau


def opacity(tau: np.ndarray) -> np.ndarray:
    """0..1: a layer's two-stream reflectance t / (1 + t), relative to that of an opaque one (OPAQUE_TAU).
    Opacity 0.3 is tau ~ 3, 0.7 is tau ~ 12; a thin cloud lets 1 - opacity of the surface through."""
    t = scaled_depth(np.asarray(tau, dtype=np.float32))
    opaque = scaled_depth(OPAQUE_TAU)
    return np.minimum(t / (1 + t) * ((1 + opaque) / opaque), 1).astype(np.float32)


def shadow_depth(tau: np.ndarray, zenith_deg: float) -> np.ndarray:
    """0..1: the share of the sunlight a cloud of optical depth tau takes from the ground below: its two-stream
    reflectance along the slant path of the sun (light scattered forward still arrives)."""
    t = scaled_depth(np.asarray(tau, dtype=np.float32)) / math.cos(math.radians(zenith_deg))
    return (t / (1 + t)).astype(np.float32)


def roughness_field(rng: np.random.Generator) -> WaveField:
    """Multi-scale roughness from 60 m to 2 km (real metres), amplitude ~ wavelength^0.5: fractal cloud edges."""
    return WaveField.random(rng, 48, (60.0, 2000.0), 0.5)


def deck_depth(field: np.ndarray, roughness: np.ndarray, threshold: float) -> np.ndarray:
    """Optical depth of the large decks: zero below the threshold of their smooth field, rising over DECK_EDGE
    to DECK_TAU; the fractal roughness frays the edge."""
    excess = (field - threshold) / DECK_EDGE + DECK_ROUGHNESS * roughness
    return (DECK_TAU * np.clip(excess, 0, 1) ** 2).astype(np.float32)


def power_law_sizes(
    rng: np.random.Generator, n: int, diameters_m: tuple[float, float] = CUMULUS_DIAMETER_M
) -> np.ndarray:
    """n diameters from the truncated power law n(D) ~ D^-b over `diameters_m` (inverse CDF)."""
    low, high = (d ** (1 - CUMULUS_SIZE_SLOPE) for d in diameters_m)
    return (low + rng.uniform(size=n) * (high - low)) ** (1 / (1 - CUMULUS_SIZE_SLOPE))


def mean_area(diameters_m: tuple[float, float] = CUMULUS_DIAMETER_M) -> float:
    """Mean nominal area (m2) of a cumulus drawn by power_law_sizes."""
    b = CUMULUS_SIZE_SLOPE
    low, high = diameters_m
    second_moment = ((high ** (3 - b) - low ** (3 - b)) / (3 - b)) / ((low ** (1 - b) - high ** (1 - b)) / (b - 1))
    return math.pi / 4 * second_moment


@dataclass(frozen=True)
class Cumuli:
    """The cumulus of one lattice cell: centres, nominal radii, elongation and orientation, core optical depth,
    and the shoreline-like harmonics that make each outline irregular."""

    x: np.ndarray
    y: np.ndarray
    radius: np.ndarray
    stretch: np.ndarray  # length / width; the area stays that of the nominal disc
    angle: np.ndarray  # of the long axis, radians from the x axis
    core_tau: np.ndarray
    harmonics: np.ndarray  # (n, 3, 2): relative amplitude and phase of orders HARMONIC_ORDERS

    def half_extent(self) -> np.ndarray:
        """Metres from each centre beyond which a cloud holds nothing (roughness up to 4 standard deviations)."""
        bulge = np.prod(1 + self.harmonics[:, :, 0], axis=1)
        return self.radius * np.sqrt(self.stretch) * bulge * (outer_radius(self.core_tau) + 4 * EDGE_ROUGHNESS)


@dataclass(frozen=True)
class CumulusField:
    """A field of broken cumulus on one date (shared by the tiles of one pass): its cover (the labelled share
    of the area, street troughs included), the range of its cloud sizes, cloud streets along the wind, and
    where the field lies. Fair-weather fields have clouds of 20 m to 1 km covering 10-30 %; dense fields cells
    of 100-800 m covering 30-70 %."""

    seed: int
    date: str
    cover: float
    wind_angle: float  # direction the streets run, radians from the x axis
    street_spacing_m: float
    street_strength: float  # 0: randomly placed clouds .. 1: all in the street rows
    street_phase: float
    height_m: float  # of the cloud layer above the ground (its shadows fall height x tan(zenith) away)
    diameter_m: tuple[float, float] = CUMULUS_DIAMETER_M  # smallest and largest cloud

    @classmethod
    def random(cls, seed: int, date: str, rng: np.random.Generator) -> CumulusField:
        """A fair-weather field."""
        return cls(
            seed=seed,
            date=date,
            cover=float(rng.uniform(*CUMULUS_COVER)),
            wind_angle=float(rng.uniform(0, math.pi)),
            street_spacing_m=float(rng.uniform(1500, 4000)),
            street_strength=float(rng.uniform(0, 0.9)),
            street_phase=float(rng.uniform(0, 2 * math.pi)),
            height_m=float(rng.uniform(800, 1800)),
        )

    def dense(self, rng: np.random.Generator) -> CumulusField:
        """The field grown dense: cells of DENSE_DIAMETER_M covering a cover drawn from DENSE_COVER."""
        return replace(self, cover=float(rng.uniform(*DENSE_COVER)), diameter_m=DENSE_DIAMETER_M)

    def street(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Relative density of cloud centres: rows along the wind with clear lanes between them."""
        across = -x * math.sin(self.wind_angle) + y * math.cos(self.wind_angle)
        rows = ((1 + np.cos(2 * math.pi * across / self.street_spacing_m + self.street_phase)) / 2) ** 2
        return (1 - self.street_strength) + self.street_strength * rows / 0.375  # mean 1 over a street period

    def density(self) -> float:
        """Cloud centres per m2 for which overlapping discs (a Boolean model, 1 - exp(-density x mean area))
        cover `cover` of the area on average over the streets."""
        phases = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        relative = (1 - self.street_strength) + self.street_strength * ((1 + np.cos(phases)) / 2) ** 2 / 0.375
        area = mean_area(self.diameter_m)
        low, high = 0.0, 50 * -math.log(1 - self.cover) / area
        for _ in range(60):  # bisection: the mean cover rises with the density
            middle = (low + high) / 2
            covered = float(np.mean(1 - np.exp(-middle * area * relative)))
            low, high = (middle, high) if covered < self.cover else (low, middle)
        return (low + high) / 2

    def cell(self, i: int, j: int, density: float) -> Cumuli:
        """The cumulus whose centres lie in lattice cell (i, j)."""
        rng = rng_for(self.seed, "cumulus", self.date, i % 2**32, j % 2**32)
        peak = density * (1 - self.street_strength + self.street_strength / 0.375)
        n = int(rng.poisson(peak * CUMULUS_CELL_M**2))
        x = (i + rng.uniform(size=n)) * CUMULUS_CELL_M
        y = (j + rng.uniform(size=n)) * CUMULUS_CELL_M
        kept = rng.uniform(size=n) * peak < density * self.street(x, y)  # thinning: the streets' density
        diameter = power_law_sizes(rng, n, self.diameter_m)
        core = np.clip(
            CUMULUS_CORE_TAU[1] * (diameter / 1000) ** 0.4 * np.exp(rng.normal(0, 0.3, n)), *CUMULUS_CORE_TAU
        )
        stretch = 1 + 0.6 * self.street_strength * rng.uniform(size=n)
        angle = self.wind_angle + rng.normal(0, 0.3, n)
        harmonics = np.stack(
            [rng.uniform(0.05, 0.3, (n, 3)) / np.sqrt(HARMONIC_ORDERS), rng.uniform(0, 2 * math.pi, (n, 3))], axis=2
        )
        return Cumuli(x[kept], y[kept], diameter[kept] / 2, stretch[kept], angle[kept], core[kept], harmonics[kept])

    def depth(self, x: np.ndarray, y: np.ndarray, roughness: np.ndarray) -> np.ndarray:
        """Optical depth of the field on the grid of pixel centres x (columns, ascending) and y (rows,
        descending), given the roughness field on that grid; overlapping clouds add up."""
        tau = np.zeros((len(y), len(x)), dtype=np.float32)
        density = self.density()
        # The largest half extent: stretch (at most 1.6) and harmonics (bulge at most 1.61) within a factor 2.5.
        reach = self.diameter_m[1] / 2 * 2.5 * (outer_radius(CUMULUS_CORE_TAU[0]) + 4 * EDGE_ROUGHNESS)
        cells_x = range(
            math.floor((x.min() - reach) / CUMULUS_CELL_M), math.floor((x.max() + reach) / CUMULUS_CELL_M) + 1
        )
        cells_y = range(
            math.floor((y.min() - reach) / CUMULUS_CELL_M), math.floor((y.max() + reach) / CUMULUS_CELL_M) + 1
        )
        near = [self.cell(i, j, density) for i in cells_x for j in cells_y]
        clouds = Cumuli(
            *(np.concatenate([getattr(cell, name) for cell in near]) for name in Cumuli.__dataclass_fields__)
        )
        half = clouds.half_extent()
        overlapping = np.nonzero(
            (clouds.x + half > x.min())
            & (clouds.x - half < x.max())
            & (clouds.y + half > y.min())
            & (clouds.y - half < y.max())
        )[0]
        for k in overlapping:
            _add_cumulus(tau, x, -y, roughness, clouds, int(k), float(half[k]))
        return tau


def _add_cumulus(
    tau: np.ndarray, x: np.ndarray, neg_y: np.ndarray, roughness: np.ndarray, clouds: Cumuli, k: int, half: float
) -> None:
    """Add cloud k's optical depth within `half` metres of its centre (neg_y: the row coordinates negated,
    ascending): a parabolic profile from core_tau at the centre to LABEL_TAU at the nominal (irregular, fractally
    roughened) outline and zero a little beyond it: the thin margin."""
    core, radius, stretch = float(clouds.core_tau[k]), float(clouds.radius[k]), float(clouds.stretch[k])
    cx, cy = float(clouds.x[k]), float(clouds.y[k])
    c0, c1 = np.searchsorted(x, [cx - half, cx + half])
    r0, r1 = np.searchsorted(neg_y, [-cy - half, -cy + half])
    if c0 >= c1 or r0 >= r1:
        return
    dx = (x[c0:c1] - cx)[None, :]
    dy = (-neg_y[r0:r1] - cy)[:, None]
    cos, sin = math.cos(clouds.angle[k]), math.sin(clouds.angle[k])
    along = (dx * cos + dy * sin) / math.sqrt(stretch)
    across = (dy * cos - dx * sin) * math.sqrt(stretch)
    direction = np.arctan2(across, along)
    outline = np.ones_like(direction)
    for order, (amplitude, phase) in zip(HARMONIC_ORDERS, clouds.harmonics[k]):
        outline *= 1 + amplitude * np.cos(order * direction + phase)
    rho = np.maximum(np.hypot(along, across) / (radius * outline) + EDGE_ROUGHNESS * roughness[r0:r1, c0:c1], 0)
    tau[r0:r1, c0:c1] += core * np.clip(1 - (rho / outer_radius(core)) ** 2, 0, None)


def outer_radius(core_tau: np.ndarray | float) -> np.ndarray | float:
    """Where a cumulus's optical depth reaches zero, in nominal radii (LABEL_TAU at 1)."""
    return 1 / np.sqrt(1 - LABEL_TAU / core_tau)


def cirrus_sheet(field: np.ndarray, roughness: np.ndarray, sheet_opacity: float) -> np.ndarray:
    """Opacity of a thin cirrus sheet: broad, smooth, fraying at its edge."""
    return (sheet_opacity * smoothstep(field + 0.3 * roughness + 0.3)).astype(np.float32)
