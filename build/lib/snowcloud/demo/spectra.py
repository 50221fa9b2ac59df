"""Spectra and atmosphere of the demo: reflectances of every surface and cloud type in the 13 bands, path
radiance, aerosol and the diffuse share of the sunlight.

Values are rough literature values at top of atmosphere scale (reflectance = pi L / (E0 cos(sun zenith))),
chosen to reproduce what makes per-pixel rules fail on real winter Sentinel-2 scenes, not to fit one scene;
docs/demo.md gives the source and the reason for each. Bands are in snowcloud.bands.BANDS order.
"""

from __future__ import annotations

import numpy as np

from snowcloud.bands import BANDS

#                            B01    B02    B03    B04    B05    B06    B07    B08    B8A    B09    B10    B11    B12
WAVELENGTH_NM = np.array([443.0, 490.0, 560.0, 665.0, 705.0, 740.0, 783.0, 842.0, 865.0, 945.0, 1375.0, 1610.0, 2190.0])

# Surfaces (bidirectional reflectance of a flat, sunlit surface).
SNOW = np.array([0.96, 0.95, 0.93, 0.90, 0.88, 0.85, 0.82, 0.78, 0.75, 0.60, 0.15, 0.12, 0.07])
VEGETATION = np.array([0.05, 0.04, 0.06, 0.04, 0.09, 0.20, 0.25, 0.28, 0.29, 0.28, 0.05, 0.17, 0.08])
ROCK = np.array([0.10, 0.11, 0.13, 0.16, 0.18, 0.20, 0.21, 0.22, 0.23, 0.23, 0.20, 0.28, 0.22])
# Weathered limestone and dolomite (Northern and Southern Limestone Alps): bright and flat, carbonate dip at 2.3 um.
LIMESTONE = np.array([0.27, 0.29, 0.32, 0.35, 0.37, 0.38, 0.39, 0.40, 0.41, 0.41, 0.42, 0.47, 0.38])
# Built-up valley floors: roofs, concrete, asphalt and gravel mixed within a 10 m pixel.
BUILT = np.array([0.18, 0.20, 0.22, 0.24, 0.25, 0.26, 0.27, 0.28, 0.28, 0.28, 0.29, 0.31, 0.28])
WATER = np.array([0.05, 0.045, 0.035, 0.022, 0.015, 0.01, 0.008, 0.007, 0.006, 0.004, 0.0, 0.003, 0.002])
# Lake water loaded with glacial flour or river sediment: backscatter raises green and red, a little the NIR.
TURBID_WATER = np.array([0.07, 0.08, 0.10, 0.09, 0.07, 0.045, 0.04, 0.035, 0.03, 0.015, 0.0, 0.006, 0.004])
# Young, bare (grey) lake ice without snow: dark in the visible, nearly black in the SWIR (ice absorbs).
LAKE_ICE = np.array([0.16, 0.16, 0.15, 0.13, 0.12, 0.10, 0.09, 0.08, 0.07, 0.05, 0.0, 0.005, 0.003])

# Clouds (TOA reflectance of an opaque layer; they scatter above most of the atmosphere).
WATER_CLOUD = np.array([0.78, 0.76, 0.75, 0.74, 0.75, 0.75, 0.75, 0.75, 0.74, 0.55, 0.06, 0.52, 0.36])
# Ice clouds (anvils, cirrostratus, ice tops of frontal decks): ice absorbs at 1.6 and 2.2 um like snow, more so
# for large crystals, so their NDSI overlaps snow's; they sit above the water vapour, so B10 sees them.
ICE_CLOUD_SMALL_CRYSTALS = np.array([0.66, 0.65, 0.64, 0.64, 0.64, 0.64, 0.64, 0.64, 0.63, 0.52, 0.32, 0.34, 0.18])
ICE_CLOUD_LARGE_CRYSTALS = np.array([0.66, 0.65, 0.64, 0.64, 0.64, 0.64, 0.63, 0.62, 0.61, 0.50, 0.30, 0.20, 0.09])
CIRRUS = np.array([0.30, 0.30, 0.30, 0.30, 0.30, 0.30, 0.30, 0.30, 0.30, 0.25, 0.40, 0.28, 0.22])

# Atmosphere. Molecular path radiance (TOA reflectance of the air itself, low winter sun).
PATH = np.array([0.10, 0.07, 0.045, 0.025, 0.02, 0.015, 0.012, 0.01, 0.009, 0.005, 0.001, 0.002, 0.001])
# Two-way transmission of the surface signal; B09 sits in a water-vapour band, B10 is handled by elevation.
TRANSMISSION = np.array([0.85, 0.88, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.55, 0.0, 0.9, 0.9])
# Aerosol optical depth relative to 550 nm (Angstrom exponent 1.3, continental haze).
ANGSTROM_EXPONENT = 1.3
AEROSOL_DEPTH = (WAVELENGTH_NM / 550.0) ** -ANGSTROM_EXPONENT
# Aerosol path reflectance per unit optical depth at 550 nm: omega P tau / (4 cos(sun zenith)) with a single
# scattering albedo of 0.9 and phase function 0.2 at a low sun; B09 is half absorbed by vapour, B10 wholly.
AEROSOL_PATH = 0.15 * AEROSOL_DEPTH * np.where(WAVELENGTH_NM == 945.0, 0.5, 1.0) * (WAVELENGTH_NM != 1375.0)
# Share of the clear-sky irradiance on flat ground that comes from the sky, not the sun's disc, with the sun
# 15-25 degrees high (Rayleigh and aerosol scattering, ~ lambda^-4 to lambda^-1.3): what lights shadows.
DIFFUSE_FRACTION = np.array([0.42, 0.35, 0.26, 0.18, 0.16, 0.14, 0.13, 0.11, 0.10, 0.10, 0.06, 0.05, 0.04])

B10 = BANDS.index("B10")

SURFACES = ("water", "turbid_water", "snow", "lake_ice", "vegetation", "rock", "limestone", "built")
SURFACE_SPECTRA = np.stack([WATER, TURBID_WATER, SNOW, LAKE_ICE, VEGETATION, ROCK, LIMESTONE, BUILT], axis=1)
CLOUDS = ("water_cloud", "ice_cloud_small", "ice_cloud_large", "cirrus")
CLOUD_SPECTRA = np.stack([WATER_CLOUD, ICE_CLOUD_SMALL_CRYSTALS, ICE_CLOUD_LARGE_CRYSTALS, CIRRUS], axis=1)
