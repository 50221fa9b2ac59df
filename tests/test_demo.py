import math
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.enums import Resampling
from rasterio.warp import transform

from snowcloud.bands import BANDS, RESOLUTION_M
from snowcloud.baselines import ndsi_rule
from snowcloud.config import load_schema
from snowcloud.demo import clouds, demo_landscape, make_demo_data, planned_products, surface, tiles
from snowcloud.demo import product as demo_product
from snowcloud.demo.cloudstats import cloud_objects, equivalent_diameters, size_slope, thin_share
from snowcloud.demo.landscape import Landscape
from snowcloud.demo.product import make_scene, write_scene
from snowcloud.demo.surface import Conditions, Surface, cast_shadow, render_surface
from snowcloud.demo.windows import scene_grid
from snowcloud.inventory import find_products

DEMO = {
    "enabled": True,
    "tiles": ["32TNS", "32TMS"],
    "dates": ["20211208T102421", "20220201T102209"],
    "size": 120,
    "seed": 2023,
    "scale": "model",  # tiny_demo's: the whole tile, every class in 120 pixels
}
REAL = {**DEMO, "tiles": ["32TMS"], "dates": ["20220303T101829"], "size": 192, "scale": "real"}


def band_members(zip_path: Path) -> dict[str, str]:
    """GDAL paths of the band files inside a product zip, by band name."""
    names = zipfile.ZipFile(zip_path).namelist()
    return {
        name.rsplit("_", 1)[1][:-4]: f"/vsizip/{zip_path}/{name}"
        for name in names
        if "/IMG_DATA/" in name and name.endswith(".jp2")
    }


def read_metadata(zip_path: Path, name: str) -> ET.Element:
    with zipfile.ZipFile(zip_path) as archive:
        member = next(n for n in archive.namelist() if n.endswith(name))
        return ET.fromstring(archive.read(member))


def local(element: ET.Element, tag: str) -> list[ET.Element]:
    return [e for e in element.iter() if e.tag.rsplit("}", 1)[-1] == tag]


def reflectance_stack(zip_path: Path) -> np.ndarray:
    """All 13 bands as TOA reflectance on the 10 m grid (nearest), NaN where DN is 0."""
    offset = -1000 if "_N0400_" in zip_path.name else 0
    members = band_members(zip_path)
    with rasterio.open(members["B02"]) as reference:
        shape = reference.shape
    stack = []
    for band in BANDS:
        with rasterio.open(members[band]) as source:
            dn = source.read(1, out_shape=shape, resampling=Resampling.nearest).astype(float)
        stack.append(np.where(dn > 0, (dn + offset) / 10000, np.nan))
    return np.stack(stack)


def test_planned_products_are_pure_and_follow_the_naming_rules(tmp_path):
    raw = tmp_path / "raw"
    planned = planned_products(DEMO, raw)
    assert not raw.exists()
    assert list(planned) == [(t, d) for t in ("32TMS", "32TNS") for d in DEMO["dates"]]
    old, new = planned[("32TNS", "20211208T102421")], planned[("32TNS", "20220201T102209")]
    assert (old.baseline, new.baseline) == ("0301", "0400")
    assert old.path == raw / "T32TNS" / old.path.name and old.path.name.endswith(".SAFE.zip")
    assert old.orbit == "065" and old.mission in ("S2A", "S2B")
    assert old.generated > old.date and old.generated[:8] == old.date[:8]  # a few hours after sensing
    assert list(planned_products(DEMO, raw, tiles=["32TMS"], dates=["20220201T102209"])) == [
        ("32TMS", "20220201T102209")
    ]
    # Both Sentinel-2 units appear over a season (5-day alternation).
    season = {**DEMO, "dates": [f"202201{day:02d}T102209" for day in range(1, 31, 5)]}
    assert {p.mission for p in planned_products(season, raw).values()} == {"S2A", "S2B"}


def test_tile_grids_sit_at_the_real_corners_and_the_derivation_agrees(monkeypatch):
    grid = tiles.tile_grid("32TNS", 10980)
    assert (grid.epsg, grid.x0, grid.y0) == (32632, 499980.0, 5200020.0)
    assert grid.bounds == (499980.0, 5090220.0, 609780.0, 5200020.0)
    assert tiles.tile_grid("32TMS", 120).x0 == 399960.0
    monkeypatch.setattr(tiles, "KNOWN_CORNERS", {})
    assert tiles.upper_left_corner("32TNS") == (499980.0, 5200020.0)
    assert tiles.upper_left_corner("32TMS") == (399960.0, 5200020.0)
    assert tiles.utm_epsg("33HYD") == 32733  # southern hemisphere
    with pytest.raises(ValueError, match="multiple of 6"):
        tiles.tile_grid("32TNS", 320)
    with pytest.raises(ValueError, match="not an MGRS tile id"):
        tiles.tile_grid("32INS", 120)


def test_products_have_the_safe_layout_and_metadata_of_their_baseline(tiny_demo):
    products = tiny_demo["products"]
    assert find_products(tiny_demo["raw_data"]) == products
    for (tile, date), product in products.items():
        names = zipfile.ZipFile(product.path).namelist()
        safe = product.path.name.removesuffix(".zip")
        assert f"{safe}/MTD_MSIL1C.xml" in names and f"{safe}/manifest.safe" in names
        assert sum(n.endswith("/MTD_TL.xml") and f"/GRANULE/L1C_T{tile}_" in n for n in names) == 1
        members = band_members(product.path)
        assert set(members) == {*BANDS, "TCI"}
        for band in BANDS:
            assert f"/IMG_DATA/T{tile}_{date}_{band}.jp2" in members[band]
            with rasterio.open(members[band]) as source:
                resolution = RESOLUTION_M[band]
                assert source.driver == "JP2OpenJPEG" and source.dtypes == ("uint16",)
                assert source.crs.to_epsg() == 32632
                assert source.shape == (120 * 10 // resolution,) * 2
                assert source.transform == tiles.tile_grid(tile, 120).transform(resolution)
        mtd = read_metadata(product.path, "MTD_MSIL1C.xml")
        assert local(mtd, "PROCESSING_BASELINE")[0].text == product.processing_baseline
        assert local(mtd, "QUANTIFICATION_VALUE")[0].text == "10000"
        offsets = {e.get("band_id"): int(e.text) for e in local(mtd, "RADIO_ADD_OFFSET")}
        assert offsets == ({str(i): -1000 for i in range(13)} if product.baseline == "0400" else {})
        tile_xml = read_metadata(product.path, "MTD_TL.xml")
        assert local(tile_xml, "HORIZONTAL_CS_CODE")[0].text == "EPSG:32632"
        assert [int(e.find("ULX").text) for e in local(tile_xml, "Geoposition")] == [
            int(tiles.tile_grid(tile, 120).x0)
        ] * 3


def test_offset_products_store_reflectance_plus_1000(tiny_demo):
    """The same landscape under both baselines: DN of the N0400 product are shifted by the offset."""
    old = tiny_demo["products"][("32TNS", "20211208T102421")]
    new = tiny_demo["products"][("32TNS", "20220201T102209")]
    with rasterio.open(band_members(old.path)["B12"]) as a, rasterio.open(band_members(new.path)["B12"]) as b:
        dn_old, dn_new = a.read(1), b.read(1)
    # Dark clear ground (B12 reflectance < 0.1) shows as DN < 1000 only without the offset.
    assert (dn_old[dn_old > 0] < 1000).any()
    assert dn_new[dn_new > 0].min() > 1000 - 200  # reflectance never far below 0


def test_class_spectra_differ_the_way_real_ones_do(tiny_demo):
    product = tiny_demo["products"][("32TNS", "20220201T102209")]
    with rasterio.open(tiny_demo["labels"].format(tile="32TNS", date="20220201T102209")) as source:
        label = source.read(1)
    toa = reflectance_stack(product.path)
    index = {band: i for i, band in enumerate(BANDS)}

    def mean(band: str, cls: int) -> float:
        return float(np.nanmean(toa[index[band]][label == cls]))

    snow, cloud, water, ground = 1, 2, 3, 0
    ndsi = lambda cls: (mean("B03", cls) - mean("B11", cls)) / (mean("B03", cls) + mean("B11", cls))  # noqa: E731
    assert ndsi(snow) > 0.6 and mean("B03", snow) > 0.5 and mean("B11", snow) < 0.2  # bright visible, dark SWIR
    assert ndsi(cloud) < 0.3 and mean("B11", cloud) > 0.35 and mean("B03", cloud) > 0.5  # bright in both
    assert mean("B08", water) < min(0.1, mean("B08", ground) / 3) and mean("B12", water) < mean("B12", ground) / 3
    assert mean("B03", ground) < 0.25 < mean("B03", snow)
    assert mean("B10", cloud) > 3 * mean("B10", ground)  # cirrus band sees clouds, hardly the ground


def test_clouds_move_and_snow_follows_the_season(tiny_demo):
    labels = {d: rasterio.open(tiny_demo["labels"].format(tile="32TNS", date=d)).read(1) for d in DEMO["dates"]}
    clouds = [labels[d] == 2 for d in DEMO["dates"]]
    assert all(c.any() for c in clouds)
    assert (clouds[0] & clouds[1]).sum() / (clouds[0] | clouds[1]).sum() < 0.5
    landscape = Landscape(DEMO["seed"], DEMO["size"])
    grid = tiles.tile_grid("32TNS", DEMO["size"])
    x = grid.x0 + 10 * (np.arange(grid.size) + 0.5)
    y = grid.y0 - 10 * (np.arange(grid.size) + 0.5)
    elevation = landscape.elevation_at(*np.meshgrid(x, y))
    for label in labels.values():
        assert np.median(elevation[label == 1]) > np.median(elevation[label == 0]) + 200  # snow lies higher up


def test_swath_edge_is_no_data_in_every_band_and_unlabelled(tmp_path):
    product = planned_products(DEMO, tmp_path)[("32TNS", "20220201T102209")]
    grid = tiles.tile_grid("32TNS", 120)
    landscape = Landscape(DEMO["seed"], 120)
    centre_x = (grid.bounds[0] + grid.bounds[2]) / 2
    scene = make_scene(product, grid, DEMO["seed"], landscape, swath_edge=(1.0, 0.0, centre_x))  # east half outside
    write_scene(scene, landscape, tmp_path / "label.tif")
    members = band_members(product.path)
    invalid = {}
    for band in BANDS:
        with rasterio.open(members[band]) as source:
            dn = source.read(1)
        k = RESOLUTION_M[band] // 10
        cols = grid.x0 + 10 * k * (np.arange(dn.shape[1]) + 0.5)
        assert (dn[:, cols > centre_x + 60] == 0).all() and (dn[:, cols < centre_x - 60] > 0).all()
        invalid[band] = np.repeat(np.repeat(dn == 0, k, 0), k, 1)
    with rasterio.open(tmp_path / "label.tif") as source:
        label = source.read(1)
    any_invalid = np.logical_or.reduce(list(invalid.values()))
    assert (label[any_invalid] == 255).all()
    assert len({int(mask.sum()) for mask in invalid.values()}) > 1  # bands see the edge at different places


def test_unzipped_product_holds_the_same_files(tmp_path, tiny_demo):
    product = planned_products(DEMO, tmp_path)[("32TMS", "20211208T102421")]
    landscape = Landscape(DEMO["seed"], 120)
    write_scene(
        make_scene(product, tiles.tile_grid("32TMS", 120), DEMO["seed"], landscape), landscape, None, zipped=False
    )
    folder = product.path.with_suffix("")
    assert folder.name.endswith(".SAFE") and folder.is_dir() and not product.path.exists()
    original = tiny_demo["products"][("32TMS", "20211208T102421")].path
    with zipfile.ZipFile(original) as archive:
        for name in archive.namelist():
            if not name.endswith("/"):
                assert (folder.parent / name).read_bytes() == archive.read(name), name


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path, tiny_demo):
    demo = {**DEMO, "tiles": ["32TMS"], "dates": ["20220201T102209"]}
    make_demo_data(
        demo, tmp_path / "raw", str(tmp_path / "T{tile}.tif"), str(tmp_path / "{tile}_{date}.tif"), threads=2
    )
    product = planned_products(demo, tmp_path / "raw")[("32TMS", "20220201T102209")]
    assert product.path.read_bytes() == tiny_demo["products"][("32TMS", "20220201T102209")].path.read_bytes()
    assert (tmp_path / "T32TMS.tif").read_bytes() == Path(tiny_demo["dem"].format(tile="32TMS")).read_bytes()
    other = {**demo, "seed": 7}
    make_demo_data(other, tmp_path / "raw7", str(tmp_path / "7_T{tile}.tif"), str(tmp_path / "7_{tile}_{date}.tif"))
    assert (
        planned_products(other, tmp_path / "raw7")[("32TMS", "20220201T102209")].path.read_bytes()
        != product.path.read_bytes()
    )


def test_dem_is_geographic_covers_the_tile_and_holds_the_terrain(tiny_demo):
    grid = tiles.tile_grid("32TNS", 120)
    landscape = Landscape(DEMO["seed"], 120)
    with rasterio.open(tiny_demo["dem"].format(tile="32TNS")) as dem:
        assert dem.crs.to_epsg() == 4326 and dem.dtypes == ("float32",)
        assert dem.res == pytest.approx((1 / 3600, 1 / 3600))
        corners_x, corners_y = transform(
            grid.crs, dem.crs, [grid.bounds[0], grid.bounds[2]], [grid.bounds[1], grid.bounds[3]]
        )
        assert dem.bounds.left < min(corners_x) and dem.bounds.right > max(corners_x)
        assert dem.bounds.bottom < min(corners_y) and dem.bounds.top > max(corners_y)
        values = dem.read(1)
        rows, cols = np.array([3, 20, 40]), np.array([5, 30, 60])
        lon, lat = rasterio.transform.xy(dem.transform, rows, cols)
    x, y = transform("EPSG:4326", grid.crs, lon, lat)
    np.testing.assert_allclose(values[rows, cols], landscape.elevation_at(np.array(x), np.array(y)), atol=0.01)
    assert 300 < values.min() and values.max() < 4500


def test_labels_lie_on_the_tile_grid(tiny_demo):
    for tile, date in tiny_demo["products"]:
        with rasterio.open(tiny_demo["labels"].format(tile=tile, date=date)) as source:
            assert source.dtypes == ("uint8",) and source.shape == (120, 120)
            assert source.transform == tiles.tile_grid(tile, 120).transform() and source.crs.to_epsg() == 32632
            assert set(np.unique(source.read(1))) <= {0, 1, 2, 3, 255}


def test_a_failure_leaves_no_product_and_no_temporary_files(tmp_path, monkeypatch):
    product = planned_products(DEMO, tmp_path / "raw")[("32TNS", "20211208T102421")]

    def broken(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(demo_product.rasterio.shutil, "copy", broken)
    with pytest.raises(RuntimeError, match="killed"):
        make_demo_data(
            DEMO | {"tiles": ["32TNS"], "dates": ["20211208T102421"]},
            tmp_path / "raw",
            str(tmp_path / "T{tile}.tif"),
            str(tmp_path / "{date}.tif"),
        )
    assert list(product.path.parent.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["T32TNS.tif", "raw"]  # the DEM came first and is whole


BACKGROUND, SNOW, CLOUD, WATER = 0, 1, 2, 3
NDSI_DEFAULTS = {
    key: spec["default"]
    for key, spec in load_schema()["properties"]["evaluation"]["properties"]["ndsi"]["properties"].items()
}
SUNLIT_FOREST = dict(
    elevation=1000.0,
    water=0.0,
    turbidity=0.0,
    snow=0.0,
    ice=0.0,
    built=0.0,
    vegetation=1.0,
    limestone=0.0,
    texture=1.0,
    direct=1.0,
    diffuse=1.0,
    aerosol=0.05,
    cloud=0.0,
    ice_phase=0.0,
    crystals=0.5,
    cloud_brightness=1.0,
    cirrus=0.0,
)
# (pixel, what an annotator labels it, what the NDSI rule says): the rule's classic failures, and where it is right.
SCENARIOS = {
    "snow in the sun": (dict(snow=1.0), SNOW, SNOW),
    "snow in a terrain shadow": (dict(snow=1.0, direct=0.0, diffuse=0.8), SNOW, SNOW),
    "forest in a terrain shadow": (dict(direct=0.0, diffuse=0.8), BACKGROUND, WATER),
    "forest in a cloud shadow": (dict(direct=0.1, diffuse=0.7), BACKGROUND, BACKGROUND),
    "water cloud over snow": (dict(snow=1.0, cloud=1.0), CLOUD, CLOUD),
    "ice cloud of large crystals over snow": (dict(snow=1.0, cloud=1.0, ice_phase=1.0, crystals=1.0), CLOUD, SNOW),
    "ice cloud of small crystals over forest": (dict(cloud=1.0, ice_phase=1.0, crystals=0.0), CLOUD, CLOUD),
    "cirrus over snow": (dict(snow=1.0, cirrus=0.4), CLOUD, SNOW),
    "bare limestone": (dict(elevation=1500.0, vegetation=0.0, limestone=1.0), BACKGROUND, CLOUD),
    "clear lake": (dict(elevation=450.0, water=1.0), WATER, WATER),
    "turbid lake in valley haze": (dict(elevation=450.0, water=1.0, turbidity=1.0, aerosol=0.2), WATER, SNOW),
    "bare lake ice": (dict(elevation=1500.0, ice=1.0), SNOW, SNOW),
}


def scenario_surface(pixels: list[dict]) -> Surface:
    """A 1 x N strip of pixels, each SUNLIT_FOREST changed by its overrides."""
    fields = {
        name: np.array([[{**SUNLIT_FOREST, **pixel}[name] for pixel in pixels]], np.float32) for name in SUNLIT_FOREST
    }
    return Surface(**fields)


def test_the_ndsi_rule_fails_where_it_fails_on_real_winter_scenes():
    """Ice clouds and cirrus over snow pass for snow, shaded forest for water, bright rock for cloud and a turbid,
    hazy lake for snow; shaded snow stays snow. Labels follow the annotator: shadow and haze change nothing."""
    names = list(SCENARIOS)
    strip = scenario_surface([SCENARIOS[name][0] for name in names])
    toa = strip.toa()
    bands = {band: toa[BANDS.index(band)] * 10000 for band in ("B02", "B03", "B08", "B11")}
    rule = ndsi_rule(bands, NDSI_DEFAULTS, np.ones(strip.water.shape, bool))[0]
    label = strip.labels()[0]
    for i, name in enumerate(names):
        _, annotator, ndsi = SCENARIOS[name]
        assert (label[i], rule[i]) == (annotator, ndsi), name
    b10 = toa[BANDS.index("B10")][0]
    ice_cloud, cirrus, sunlit_snow = (
        names.index(n) for n in ("ice cloud of large crystals over snow", "cirrus over snow", "snow in the sun")
    )
    assert b10[ice_cloud] > 0.2 and b10[cirrus] > 0.1 > 0.01 > b10[sunlit_snow]  # what the model can use
    blue, nir = toa[BANDS.index("B02")][0], toa[BANDS.index("B08")][0]
    shade, sun = names.index("forest in a terrain shadow"), names.index("snow in a terrain shadow")
    assert blue[shade] > nir[shade] and blue[sun] / nir[sun] > 1.2  # sky light is blue


def test_thin_cloud_is_cloud_and_its_faint_edge_unlabelled():
    opacity = [0.05, 0.2, 0.35]
    label = scenario_surface([dict(snow=1.0, cloud=c) for c in opacity] + [dict(cirrus=c) for c in opacity]).labels()[0]
    assert list(label) == [SNOW, 255, CLOUD, BACKGROUND, 255, CLOUD]


def test_a_low_winter_sun_casts_terrain_shadows_that_join_across_strips(monkeypatch):
    landscape = Landscape(DEMO["seed"], 384)
    grid = tiles.tile_grid("32TMS", 384)
    x = grid.x0 + 10 * (np.arange(384) + 0.5)
    y = grid.y0 - 10 * (np.arange(300) + 0.5)
    raw = landscape.raw_elevation_grid(x, y)
    winter = cast_shadow(landscape, x, y, raw, 75.0, 158.0)
    spring = cast_shadow(landscape, x, y, raw, 55.0, 158.0)
    assert 0.05 < winter.mean() < 0.5 and spring.mean() < winter.mean() / 2
    assert ((winter > 0.5) >= (spring > 0.5)).all()  # a lower sun only adds shadow
    monkeypatch.setattr(surface, "SHADOW_SAMPLE_M", 1200.0)  # a horizon lattice of 4 pixels
    coarse = cast_shadow(landscape, x, y, raw, 75.0, 158.0)
    assert (np.abs(coarse - winter) > 0.5).mean() < 0.03
    halves = [cast_shadow(landscape, x, y[rows], raw[rows], 75.0, 158.0) for rows in (slice(0, 130), slice(130, None))]
    np.testing.assert_array_equal(np.vstack(halves), coarse)


@pytest.mark.parametrize("snowline_above_level, expected", [(-400, "open"), (50, "freezing"), (400, "frozen")])
def test_lakes_freeze_from_the_shore_and_the_youngest_ice_is_bare(snowline_above_level, expected):
    landscape = Landscape(DEMO["seed"], 384)
    grid = tiles.tile_grid("32TMS", 384)
    lake = max(landscape.lakes_near(*grid.bounds), key=lambda lake: lake.radius)
    conditions = replace(
        Conditions.for_scene(DEMO["seed"], "32TMS", "20211208T102421", landscape, grid.bounds),
        snowline_m=lake.level - snowline_above_level,
        cloud_cover=1e-6,
        cirrus_opacity=0.0,
        cirrus_sheet=0.0,
        cumulus=None,
        valley_haze=0.0,
    )
    offsets = 10 * (np.arange(-40, 40) + 0.5)
    x, y = lake.x + offsets, lake.y - offsets
    state = render_surface(landscape, conditions, x, y, np.ones((80, 80), np.float32))
    label, toa = state.labels(), state.toa()
    distance, shore = lake.distance_and_shore(x[None, :], y[:, None])
    centre, near_shore = distance < 0.1 * shore, (distance > 0.8 * shore) & (distance < 0.9 * shore)
    bare = state.ice > 0.9
    if expected == "open":
        assert (label[centre] == WATER).all() and (label[near_shore] == WATER).all() and not bare.any()
    elif expected == "freezing":
        assert (
            (label[centre] == WATER).all()
            and (label[near_shore] == SNOW).all()
            and (state.snow[near_shore] > 0.9).all()
        )
        assert bare.sum() > 20 and (label[bare] == SNOW).all()
        swir, green = toa[BANDS.index("B11")], toa[BANDS.index("B03")]
        assert swir[bare].max() < 0.03 and green[bare].max() < green[near_shore].min()  # dark grey ice
    else:
        assert (label[centre] == SNOW).all() and (label[near_shore] == SNOW).all() and not bare.any()


# Cloud morphology (docs/demo.md, "Clouds as real skies have them"): the statistics the generator targets.
SIZE_SLOPE_BOUNDS = (1.4, 2.3)  # n(D) ~ D^-b of cumulus below 1 km (Sengupta et al. 1990)
COVER_TOLERANCE = 0.05  # labelled cover of a field against the cover it was drawn with
THIN_SHARE_BOUNDS = (0.15, 0.35)  # semi-transparent share of the cloud-affected pixels (about a quarter)


@pytest.mark.parametrize("field", [0, 1])
def test_cumulus_fields_have_published_size_slope_cover_and_thin_share(field):
    size = 768  # 7.7 km square at 10 m: several hundred clouds
    x = 10 * (np.arange(size) + 0.5)
    y = 5_000_000 - 10 * (np.arange(size) + 0.5)
    rng = np.random.default_rng(field)
    cumulus = clouds.CumulusField.random(DEMO["seed"], f"field{field}", rng)
    opacity = clouds.opacity(cumulus.depth(x, y, clouds.roughness_field(rng).grid(x, y)))
    cloud_from, thin_from = surface.LABEL_CLOUD[1], surface.LABEL_CLOUD[0]
    _, areas = cloud_objects(opacity >= cloud_from)
    slope = size_slope(equivalent_diameters(areas[1:]), *clouds.CUMULUS_DIAMETER_M)
    assert SIZE_SLOPE_BOUNDS[0] <= slope <= SIZE_SLOPE_BOUNDS[1]
    assert abs((opacity >= cloud_from).mean() - cumulus.cover) <= COVER_TOLERANCE
    assert THIN_SHARE_BOUNDS[0] <= thin_share(opacity, thin_from, clouds.THIN_BELOW) <= THIN_SHARE_BOUNDS[1]
    assert (areas[1:] < 10).sum() > 0.3 * len(areas[1:])  # clouds of a few pixels are the most numerous


def test_cloud_objects_are_eight_connected_and_the_slope_of_a_known_power_law_is_found():
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = mask[1, 1] = True  # touching at a corner: one object
    mask[4:6, 3:6] = True
    ids, areas = cloud_objects(mask)
    assert sorted(areas[1:]) == [2, 6] and (ids[mask] > 0).all() and (ids[~mask] == 0).all()
    rng = np.random.default_rng(0)
    diameters = (1 - rng.uniform(size=20000)) ** (-1 / 1.0) * 20  # n(D) ~ D^-2 above 20 m
    assert size_slope(diameters, 20, 2000) == pytest.approx(2.0, abs=0.1)


def test_thin_margins_are_labelled_as_documented_and_show_the_snow_below():
    """Opacity is the two-stream reflectance of the optical depth: the annotator's cloud line (opacity 0.3) runs
    at tau ~ 3; below opacity 0.12 the pixel is the surface, between the two it is not labelled. A thin margin
    mixes with the snow below it: its NDSI falls from snow's towards the cloud's as the cloud thickens."""
    assert clouds.opacity(clouds.LABEL_TAU) == pytest.approx(surface.LABEL_CLOUD[1], abs=0.02)
    depths = [0.5, 2.0, 3.5, 8.0, 40.0]
    strip = scenario_surface([dict(snow=1.0, cloud=float(clouds.opacity(tau))) for tau in depths])
    assert list(strip.labels()[0]) == [SNOW, 255, CLOUD, CLOUD, CLOUD]
    toa = strip.toa()
    green, swir = toa[BANDS.index("B03")][0], toa[BANDS.index("B11")][0]
    ndsi = (green - swir) / (green + swir)
    assert (np.diff(ndsi) < 0).all() and ndsi[2] > 0.4 > 0.2 > ndsi[-1]  # the NDSI rule calls the thin margin snow


def test_a_thin_cirrus_sheet_shows_mainly_in_b10_and_leaves_the_label_to_the_ground():
    sheet = float(clouds.cirrus_sheet(np.array(3.0), np.array(0.0), 0.1))
    strip = scenario_surface([{}, dict(cirrus=sheet), dict(snow=1.0), dict(snow=1.0, cirrus=sheet)])
    toa, label = strip.toa(), strip.labels()[0]
    assert list(label) == [BACKGROUND, BACKGROUND, SNOW, SNOW]
    b10, b03 = toa[BANDS.index("B10")][0], toa[BANDS.index("B03")][0]
    assert b10[1] > 5 * b10[0] and b10[3] > 5 * b10[2]  # plain in B10 over dark and bright ground
    assert abs(b03[3] - b03[2]) < 0.1 * b03[2] and b03[1] - b03[0] < 0.05  # faint in the visible


def test_cumulus_shadows_fall_away_from_the_sun_by_the_cloud_height():
    landscape = Landscape(DEMO["seed"], 384)
    grid = tiles.tile_grid("32TMS", 384)
    conditions = Conditions.for_scene(DEMO["seed"], "32TMS", "20220201T102209", landscape, grid.bounds)
    conditions = replace(conditions, cloud_cover=1e-6, cirrus_opacity=0.0, cirrus_sheet=0.0)
    assert conditions.cumulus is not None
    x = grid.x0 + 10 * (np.arange(200) + 0.5)
    y = grid.y0 - 10 * (np.arange(200) + 0.5)
    lit = render_surface(landscape, replace(conditions, cumulus=None), x, y, np.ones((200, 200), np.float32)).direct
    state = render_surface(landscape, conditions, x, y, np.ones((200, 200), np.float32))
    dx, dy = surface.cumulus_shadow_shift(conditions)
    assert dx > 0 and dy < 0 and math.hypot(dx, dy) > conditions.cumulus.height_m  # towards the sun in the SSE
    roughness = conditions.roughness.shifted(dx, dy).grid(x, y)
    above = clouds.opacity(conditions.cumulus.depth(x + dx, y + dy, roughness))
    shaded, clear = (above > 0.7) & (state.cloud == 0) & (lit > 0.3), (above == 0) & (lit > 0.3)
    assert shaded.sum() > 100 and clear.sum() > 100
    assert (state.direct[shaded] / lit[shaded]).max() < 0.6 and (state.direct[clear] == lit[clear]).all()


def test_the_default_validation_scenes_hold_every_class_under_a_dense_cumulus_field():
    """The shipped demo: real-size windows whose validation date has a dense field of cumulus cells, and snow,
    open water and snow-free ground beside them (what the workflow's per-class comparison needs)."""
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())
    demo = config["demo"]
    assert demo["scale"] == "real" and demo["size"] * 10 < 5000  # windows a few km wide, not the tile shrunk
    (date,) = config["datasets"]["demo"]["split"]["validation_dates"]
    landscape = demo_landscape(demo)
    counts = np.zeros(4, int)
    for tile in demo["tiles"]:
        grid = scene_grid(demo, tile, landscape)
        conditions = Conditions.for_scene(demo["seed"], tile, date, landscape, grid.bounds)
        assert conditions.cumulus.diameter_m == clouds.DENSE_DIAMETER_M
        assert clouds.DENSE_COVER[0] <= conditions.cumulus.cover <= clouds.DENSE_COVER[1]
        x = grid.x0 + 10 * (np.arange(grid.size) + 0.5)
        y = grid.y0 - 10 * (np.arange(grid.size) + 0.5)
        label = render_surface(landscape, conditions, x, y, np.ones((grid.size, grid.size), np.float32)).labels()
        counts += np.bincount(label[label < 4], minlength=4)
        assert (label == SNOW).mean() > 0.1 and (label == CLOUD).mean() > 0.3
    assert counts[BACKGROUND] > 5000 and counts[WATER] > 500


def test_real_scale_scenes_are_windows_of_the_tile_at_their_real_place_and_the_dem_agrees(tmp_path):
    paths = (tmp_path / "raw", str(tmp_path / "T{tile}.tif"), str(tmp_path / "{tile}_{date}.tif"))
    make_demo_data(REAL, *paths)
    landscape = demo_landscape(REAL)
    whole, grid = tiles.tile_grid("32TMS", 10980), scene_grid(REAL, "32TMS", landscape)
    assert scene_grid({**REAL, "dates": ["20211208T102421", *REAL["dates"]]}, "32TMS", landscape) == grid  # a new date
    left, bottom, right, top = grid.bounds
    assert whole.bounds[0] <= left < right <= whole.bounds[2] and whole.bounds[1] <= bottom < top <= whole.bounds[3]
    assert (left - whole.x0) % 60 == 0 and (whole.y0 - top) % 60 == 0 and (left, top) != (whole.x0, whole.y0)
    product = planned_products(REAL, paths[0])[("32TMS", "20220303T101829")]
    for band in ("B02", "B11", "B10"):
        with rasterio.open(band_members(product.path)[band]) as source:
            assert source.transform == grid.transform(RESOLUTION_M[band]) and source.shape == grid.shape(
                RESOLUTION_M[band]
            )
    positions = [
        (int(e.find("ULX").text), int(e.find("ULY").text))
        for e in local(read_metadata(product.path, "MTD_TL.xml"), "Geoposition")
    ]
    assert positions == [(int(left), int(top))] * 3
    with rasterio.open(str(tmp_path / "T32TMS.tif")) as dem:
        corners_x, corners_y = transform(grid.crs, dem.crs, [left, right], [bottom, top])
        assert dem.bounds.left < min(corners_x) and dem.bounds.right > max(corners_x)
        assert dem.bounds.bottom < min(corners_y) and dem.bounds.top > max(corners_y)
        assert dem.width < 400  # the window's surroundings, not the tile
        rows, cols = np.array([10, 30, 50, 70]), np.array([12, 35, 60, 95])
        lon, lat = rasterio.transform.xy(dem.transform, rows, cols)
        values = dem.read(1)[rows, cols]
    x, y = transform("EPSG:4326", grid.crs, lon, lat)
    np.testing.assert_allclose(values, landscape.elevation_at(np.array(x), np.array(y)), atol=0.01)
    # The scene's lake is the landscape's at the same real coordinates: flat water at its level.
    with rasterio.open(str(tmp_path / "32TMS_20220303T101829.tif")) as source:
        assert source.transform == grid.transform()
        water = source.read(1) == WATER
    rows, cols = np.nonzero(water)
    assert len(rows) > 200
    elevation = landscape.elevation_at(grid.x0 + 10 * (cols + 0.5), grid.y0 - 10 * (rows + 0.5))
    levels = {round(lake.level, 3) for lake in landscape.lakes_near(*grid.bounds)}
    assert round(float(elevation[0]), 3) in levels and np.ptp(elevation) < 0.01


def test_the_scale_is_named_and_a_wrong_one_is_refused():
    real, model = Landscape(2023, 384, "real"), Landscape(2023, 384, "model")
    assert (real.extent, real.slope_scale, model.extent) == (109_800.0, 1.0, 3840.0)
    assert [lattice.name for lattice in real.lattices] == ["lake", "tarn"] and model.fine_relief is None
    with pytest.raises(ValueError, match="demo.scale"):
        Landscape(2023, 384, "toy")


def test_dense_cumulus_cells_have_real_widths_in_pixels_thick_cores_and_thin_edges():
    """Cells of 100-800 m are 10-80 pixels across at 10 m: measured on a field thinned to 10 % cover, where they
    stand apart; the field itself covers what it was drawn with."""
    size = 512
    x = 10 * (np.arange(size) + 0.5)
    y = 5_000_000 - 10 * (np.arange(size) + 0.5)
    for field in range(3):
        rng = np.random.default_rng(field)
        dense = clouds.CumulusField.random(DEMO["seed"], f"dense{field}", rng).dense(rng)
        roughness = clouds.roughness_field(rng).grid(x, y)
        opacity = clouds.opacity(dense.depth(x, y, roughness))
        cloud = opacity >= surface.LABEL_CLOUD[1]
        assert abs(cloud.mean() - dense.cover) <= 0.08
        assert (opacity[cloud] >= clouds.THIN_BELOW).mean() > 0.6  # thick cores
        assert 0.05 < thin_share(opacity, surface.LABEL_CLOUD[0], clouds.THIN_BELOW) < 0.35  # and thin edges
        sparse = replace(dense, cover=0.1)
        _, areas = cloud_objects(clouds.opacity(sparse.depth(x, y, roughness)) >= surface.LABEL_CLOUD[1])
        widths = equivalent_diameters(areas[1:], pixel_m=10.0) / 10  # pixels
        assert 10 <= np.median(widths) <= 40 and np.percentile(widths, 90) <= 90 and widths.max() < 120


def test_cumulus_in_streets_lie_in_rows_along_the_wind_with_clear_lanes_between():
    size = 512
    x = 10 * (np.arange(size) + 0.5)
    y = 5_000_000 - 10 * (np.arange(size) + 0.5)
    rng = np.random.default_rng(7)
    cumulus = replace(clouds.CumulusField.random(DEMO["seed"], "streets", rng), street_strength=0.9, cover=0.25)
    cloud = clouds.opacity(cumulus.depth(x, y, clouds.roughness_field(rng).grid(x, y))) >= surface.LABEL_CLOUD[1]
    rows = cumulus.street(x[None, :], y[:, None])
    assert cloud[rows > 1.5].mean() > 3 * cloud[rows < 0.3].mean()
