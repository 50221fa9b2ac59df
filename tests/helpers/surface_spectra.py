"""Reflectances of typical surfaces and the class each must get (the baseline and evaluation tests)."""

# Hand-made top-of-atmosphere reflectances (B02, B03, B08, B11) of typical surfaces, and the class each must get.
SPECTRA = {
    # NDSI (0.85-0.10)/(0.95) = 0.79 > 0.4, green 0.85 > 0.1; bright in blue but snow-like in the SWIR
    "fresh snow": ((0.90, 0.85, 0.75, 0.10), 1),
    # shaded snow: dark, NDSI (0.15-0.02)/0.17 = 0.76, green 0.15; NDWI (0.15-0.12)/0.27 = 0.11
    "shaded snow": ((0.20, 0.15, 0.12, 0.02), 1),
    # cloud: bright in blue, bright in the SWIR: NDSI (0.6-0.5)/1.1 = 0.09
    "cloud": ((0.60, 0.60, 0.65, 0.50), 2),
    # clear lake: dark, NDWI (0.06-0.02)/0.08 = 0.5; NDSI high (0.06-0.01)/0.07 = 0.71 but green 0.06 < 0.1
    "lake": ((0.07, 0.06, 0.02, 0.01), 3),
    # vegetation: NDWI (0.08-0.35)/0.43 < 0, NDSI (0.08-0.18)/0.26 < 0, blue 0.05
    "meadow": ((0.05, 0.08, 0.35, 0.18), 0),
    # bare rock: NDSI (0.15-0.25)/0.4 < 0, blue 0.12 < 0.25
    "rock": ((0.12, 0.15, 0.22, 0.25), 0),
}
