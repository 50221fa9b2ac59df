import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from helpers.safe_factory import band_shape, constant_bands, make_product

from snowcloud.bands import BANDS
from snowcloud.inventory import parse_product_name, product_name
from snowcloud.safe import SafeError, open_safe, parse_metadata


def rezip(source, target, drop=(), replace=None, compression=None):
    """Copy a product zip, leaving out members ending with any of `drop`, replacing members by suffix."""
    replace = replace or {}
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for info in original.infolist():
            if any(info.filename.endswith(suffix) for suffix in drop):
                continue
            data = next((value for suffix, value in replace.items() if info.filename.endswith(suffix)), None)
            data = original.read(info) if data is None else data
            info.compress_type = compression if compression is not None else info.compress_type
            copy.writestr(info, data)
    return target


def jp2_bytes(tmp_path, shape, crs="EPSG:32632", transform=None):
    path = tmp_path / "replacement.jp2"
    transform = transform or Affine(20, 0, 499980, 0, -20, 5200020)
    with rasterio.open(
        path,
        "w",
        driver="JP2OpenJPEG",
        width=shape[1],
        height=shape[0],
        count=1,
        dtype="uint16",
        crs=crs,
        transform=transform,
        QUALITY=100,
        REVERSIBLE="YES",
    ) as out:
        out.write(np.full(shape, 1234, dtype=np.uint16), 1)
    return path.read_bytes()


def test_reads_both_baselines_of_the_demo(tiny_demo):
    for (tile, date), product in tiny_demo["products"].items():
        safe = open_safe(product.path)
        assert (safe.tile, safe.date, safe.name) == (tile, date, product.path.name.removesuffix(".zip"))
        assert safe.processing_baseline == product.processing_baseline
        assert safe.quantification_value == 10000
        assert safe.offsets == dict.fromkeys(BANDS, -1000 if product.baseline == "0400" else 0)
        assert list(safe.band_paths) == list(BANDS)
        assert all(path.startswith(f"/vsizip/{product.path.resolve()}/") for path in safe.band_paths.values())
        assert (safe.width, safe.height, safe.crs.to_epsg()) == (120, 120, 32632)
        assert "T32" in safe.band_source("B05") and str(product.path) in safe.band_source("B05")


def test_folder_and_deflated_zip_read_like_the_original(tmp_path, tiny_demo):
    original = tiny_demo["products"][("32TNS", "20220201T102209")].path
    with zipfile.ZipFile(original) as archive:
        archive.extractall(tmp_path / "unpacked")
    folder = next((tmp_path / "unpacked").iterdir())
    deflated = rezip(original, tmp_path / original.name, compression=zipfile.ZIP_DEFLATED)
    reference = open_safe(original)
    for other in (open_safe(folder), open_safe(deflated)):
        assert (other.name, other.offsets, other.transform) == (reference.name, reference.offsets, reference.transform)
        for band in ("B02", "B8A", "B10"):
            with rasterio.open(other.band_paths[band]) as a, rasterio.open(reference.band_paths[band]) as b:
                np.testing.assert_array_equal(a.read(1), b.read(1))


ESA_LIKE = b"""<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-1C_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-1C.xsd">
 <n1:General_Info><Product_Info><PRODUCT_URI>S2A_MSIL1C_20230101T101421_N0509_R022_T32TNS_20230101T120000.SAFE</PRODUCT_URI>
  <PROCESSING_BASELINE>05.09</PROCESSING_BASELINE></Product_Info>
  <Product_Image_Characteristics><QUANTIFICATION_VALUE unit="none">10000</QUANTIFICATION_VALUE>
   <Radiometric_Offset_List><RADIO_ADD_OFFSET band_id="0">-1000</RADIO_ADD_OFFSET><RADIO_ADD_OFFSET band_id="8">-900</RADIO_ADD_OFFSET>
    <RADIO_ADD_OFFSET band_id="12">-1100</RADIO_ADD_OFFSET></Radiometric_Offset_List>
   <Spectral_Information_List><Spectral_Information bandId="0" physicalBand="B1"/><Spectral_Information bandId="8" physicalBand="B8A"/>
    <Spectral_Information bandId="12" physicalBand="B12"/></Spectral_Information_List>
  </Product_Image_Characteristics></n1:General_Info></n1:Level-1C_User_Product>"""


def test_metadata_is_parsed_by_local_names_with_band_ids_mapped():
    metadata = parse_metadata(ESA_LIKE, "MTD_MSIL1C.xml")
    assert metadata["baseline"] == "05.09" and metadata["quantification"] == 10000.0
    assert metadata["name"].startswith("S2A_MSIL1C_20230101T101421")
    assert (metadata["offsets"]["B01"], metadata["offsets"]["B8A"], metadata["offsets"]["B12"]) == (-1000, -900, -1100)
    assert metadata["offsets"]["B02"] == 0  # not in the XML: no offset, whatever the date
    plain = ESA_LIKE.replace(b"n1:", b"").replace(
        b' xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-1C.xsd"', b""
    )
    assert parse_metadata(plain, "x") == metadata
    with pytest.raises(SafeError, match="x: no QUANTIFICATION_VALUE"):
        parse_metadata(ESA_LIKE.replace(b"QUANTIFICATION_VALUE", b"SOMETHING_ELSE"), "x")
    with pytest.raises(SafeError, match="not valid XML"):
        parse_metadata(ESA_LIKE[:200], "x")


def test_not_a_zip_and_truncated_zip_are_named(tmp_path, tiny_demo):
    original = tiny_demo["products"][("32TNS", "20211208T102421")].path
    text = tmp_path / original.name
    text.write_text("<html>Service unavailable</html>")
    with pytest.raises(SafeError, match=f"{text}: not a zip file, or a truncated one"):
        open_safe(text)
    truncated = tmp_path / "truncated" / original.name
    truncated.parent.mkdir()
    truncated.write_bytes(original.read_bytes()[: original.stat().st_size // 2])
    with pytest.raises(SafeError, match=f"{truncated}: not a zip file, or a truncated one"):
        open_safe(truncated)
    with pytest.raises(SafeError, match="no such product"):
        open_safe(tmp_path / "missing.SAFE.zip")


def test_zip_whose_member_runs_past_the_end_is_truncated(tmp_path, tiny_demo):
    original = tiny_demo["products"][("32TNS", "20211208T102421")].path
    data = bytearray(original.read_bytes())
    with zipfile.ZipFile(original) as archive:
        last_band = max((i for i in archive.infolist() if i.filename.endswith(".jp2")), key=lambda i: i.header_offset)
    # Cut bytes out of the last band but keep the directory at the end: the offsets now point too far.
    cut = tmp_path / original.name
    cut.write_bytes(
        bytes(data[: last_band.header_offset + 100] + data[last_band.header_offset + 100 + last_band.compress_size :])
    )
    with pytest.raises(SafeError, match=f"{cut}: (truncated|corrupt) zip"):
        open_safe(cut)


def test_missing_metadata_and_missing_band_are_named(tmp_path, tiny_demo):
    original = tiny_demo["products"][("32TNS", "20211208T102421")].path
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    no_metadata = rezip(original, tmp_path / "a" / original.name, drop=["MTD_MSIL1C.xml"])
    with pytest.raises(SafeError, match=f"{no_metadata}: no MTD_MSIL1C.xml"):
        open_safe(no_metadata)
    no_band = rezip(original, tmp_path / "b" / original.name, drop=["_B05.jp2", "_B09.jp2"])
    with pytest.raises(SafeError, match=r"band file\(s\) B05, B09 missing \(expected GRANULE/L1C_T32TNS_\w+/IMG_DATA/"):
        open_safe(no_band)


def test_band_of_wrong_size_or_crs_is_named(tmp_path):
    size = 12
    product = make_product(tmp_path / "ok", constant_bands(size))
    wrong_size = rezip(product, tmp_path / "size.zip", replace={"_B05.jp2": jp2_bytes(tmp_path, (5, 6))})
    with pytest.raises(SafeError, match=r"size.zip: band B05 is 6 x 5 pixels; at 20 m it must be 6 x 6"):
        open_safe(wrong_size)
    wrong_crs = rezip(
        product,
        tmp_path / "crs.zip",
        replace={"_B11.jp2": jp2_bytes(tmp_path, band_shape("B11", size), crs="EPSG:32633")},
    )
    with pytest.raises(SafeError, match=r"crs.zip: band B11 is in EPSG:32633, B02 in EPSG:32632"):
        open_safe(wrong_crs)
    shifted = Affine(20, 0, 499980 + 20, 0, -20, 5200020)
    misaligned = rezip(
        product,
        tmp_path / "shift.zip",
        replace={"_B12.jp2": jp2_bytes(tmp_path, band_shape("B12", size), transform=shifted)},
    )
    with pytest.raises(SafeError, match="shift.zip: band B12 is not aligned with B02"):
        open_safe(misaligned)


def test_unpacked_product_missing_a_band_is_named(tmp_path):
    folder = make_product(tmp_path, constant_bands(12), zipped=False)
    next(folder.rglob("*_B8A.jp2")).unlink()
    with pytest.raises(SafeError, match="B8A missing"):
        open_safe(folder)
    shutil.rmtree(folder / "GRANULE")
    with pytest.raises(SafeError, match=r"B01, B02, .* missing \(expected GRANULE/\*/IMG_DATA/"):
        open_safe(folder)


def test_damaged_band_data_fails_the_crc_check(tmp_path, tiny_demo):
    """A JP2 with damaged bytes decodes without error into wrong pixels: the zip's CRC must catch it."""
    original = tiny_demo["products"][("32TNS", "20220201T102209")].path
    with zipfile.ZipFile(original) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("_B04.jp2"))
    data = bytearray(original.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size // 2
    data[start : start + 100] = bytes(100)
    damaged = tmp_path / original.name
    damaged.write_bytes(bytes(data))
    with pytest.raises(SafeError, match=rf"{damaged}: corrupt zip file \(.*_B04.jp2: Bad CRC-32"):
        open_safe(damaged)


@pytest.mark.parametrize(("field", "other"), [("date", "20220203T101159"), ("tile", "32TMS")])
def test_a_product_saved_under_another_products_name_is_refused_naming_both(tmp_path, field, other):
    """The workflow plans a scene by the product's name; the tile and date in its band files must agree."""
    safe = make_product(tmp_path, constant_bands(60))
    planned = parse_product_name(safe)
    names = {"tile": planned.tile, "date": planned.date, field: other}
    renamed = safe.with_name(
        product_name("S2B", names["date"], "0400", "065", names["tile"], planned.generated) + ".zip"
    )
    safe.rename(renamed)
    with pytest.raises(
        SafeError,
        match=rf"{renamed}: its name says tile {names['tile']} sensed {names['date']}, "
        rf"its band files hold tile {planned.tile} sensed {planned.date}",
    ):
        open_safe(renamed)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (b">10000<", b">0<", "x.xml: QUANTIFICATION_VALUE is 0; snowcloud reads reflectance as DN / 10000"),
        (b">10000<", b">4096<", "x.xml: QUANTIFICATION_VALUE is 4096; snowcloud reads reflectance as DN / 10000"),
        (b">10000<", b">ten thousand<", "x.xml: QUANTIFICATION_VALUE is 'ten thousand', not a number"),
        (b">-900<", b">-9OO<", "x.xml: RADIO_ADD_OFFSET of band_id 8 is '-9OO', not a number"),
        (b'band_id="12"', b'band_id="B12"', "x.xml: the band_id of a RADIO_ADD_OFFSET is 'B12', not a number"),
        (b'bandId="8"', b'bandId=""', "x.xml: the bandId of Spectral_Information B8A is '', not a number"),
    ],
)
def test_metadata_values_that_cannot_be_used_are_named(old, new, message):
    with pytest.raises(SafeError, match=message):
        parse_metadata(ESA_LIKE.replace(old, new), "x.xml")


def unpacked(product: Path, folder: Path) -> Path:
    with zipfile.ZipFile(product) as archive:
        archive.extractall(folder)
    (safe,) = folder.glob("*.SAFE")
    return safe


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_an_unpacked_band_that_is_a_link_to_another_bands_file_is_refused_naming_it(tmp_path, tiny_demo, link):
    """Read as it is, B05 would be B06 (a probe's product: B05 a symlink to the B06 file; exit 0)."""
    safe = unpacked(tiny_demo["products"][("32TNS", "20220201T102209")].path, tmp_path)
    b05, b06 = (next(safe.rglob(f"*_{band}.jp2")) for band in ("B05", "B06"))
    b05.unlink()
    if link == "symbolic":
        b05.symlink_to(b06.name)
    else:
        b05.hardlink_to(b06)
    said = (
        r"band B05 \(GRANULE/.*_B05.jp2\) is a link to the file of band B06 \(GRANULE/.*_B06.jp2\): it would "
        r"be read as B06"
        if link == "symbolic"
        else r"bands B05 \(.*_B05.jp2\) and B06 \(.*_B06.jp2\) are one file"
    )
    with pytest.raises(SafeError, match=rf"{safe}: {said}"):
        open_safe(safe)


def test_a_band_file_unlike_the_one_the_manifest_declares_is_refused_naming_it(tmp_path, tiny_demo):
    """manifest.safe declares each file's size and checksum: a band replaced by another band's bytes (a copy,
    not a link), in a folder or re-zipped, is named."""
    original = tiny_demo["products"][("32TNS", "20220201T102209")].path
    safe = unpacked(original, tmp_path / "unpacked")
    b05, b06 = (next(safe.rglob(f"*_{band}.jp2")) for band in ("B05", "B06"))
    b05.write_bytes(b06.read_bytes())
    with pytest.raises(
        SafeError,
        match=rf"{safe}: band B05 \(GRANULE/.*_B05.jp2\) is \d+ bytes, the product's "
        r"manifest.safe declares \d+: a damaged or replaced file",
    ):
        open_safe(safe)

    rezipped = rezip(original, tmp_path / original.name, replace={"_B05.jp2": b06.read_bytes()})
    with pytest.raises(
        SafeError,
        match=rf"{rezipped}: band B05 \(.*_B05.jp2\) does not match the product's "
        r"manifest.safe \(MD5 [0-9a-f]{32}, declared [0-9a-f]{32}\)",
    ):
        open_safe(rezipped)


def test_a_manifest_with_sha3_checksums_is_checked_too(tmp_path, tiny_demo):
    """Products declare MD5 or SHA3-256 checksums; the demo writes MD5 (and checks out: every test reads it)."""
    safe = unpacked(tiny_demo["products"][("32TNS", "20220201T102209")].path, tmp_path)
    manifest = (safe / "manifest.safe").read_text()
    b05 = next(safe.rglob("*_B05.jp2"))
    md5, sha3 = hashlib.md5(b05.read_bytes()).hexdigest(), hashlib.sha3_256(b05.read_bytes()).hexdigest()
    assert f'checksumName="MD5">{md5}<' in manifest
    sha3_manifest = manifest.replace(f'checksumName="MD5">{md5}<', f'checksumName="SHA3-256">{sha3}<')
    (safe / "manifest.safe").write_text(sha3_manifest)
    assert open_safe(safe).tile == "32TNS"
    (safe / "manifest.safe").write_text(sha3_manifest.replace(sha3, "0" * 64))
    with pytest.raises(SafeError, match=r"band B05 .* does not match the product's manifest.safe \(SHA3-256 "):
        open_safe(safe)
