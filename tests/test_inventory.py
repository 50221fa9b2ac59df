import logging

import pytest

from snowcloud.inventory import InventoryError, find_products, parse_product_name


def test_parse_product_name_zipped_and_unpacked():
    zipped = parse_product_name("S2B_MSIL1C_20210116T102351_N0209_R065_T32TNS_20210116T123456.SAFE.zip")
    assert (zipped.tile, zipped.date, zipped.processing_baseline, zipped.zipped) == (
        "32TNS",
        "20210116T102351",
        "02.09",
        True,
    )
    unpacked = parse_product_name("/x/S2A_MSIL1C_20220201T102209_N0400_R065_T32TMS_20220201T121212.SAFE")
    assert (unpacked.tile, unpacked.zipped, unpacked.mission) == ("32TMS", False, "S2A")
    assert parse_product_name("S2B_MSIL2A_20210116T102351_N0209_R065_T32TNS_20210116T123456.SAFE") is None


def test_find_products_restricts_and_ignores_contents_of_safe_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "S2B_MSIL1C_20210116T102351_N0209_R065_T32TNS_20210116T123456.SAFE.zip").write_bytes(b"")
    safe = tmp_path / "S2B_MSIL1C_20210126T102351_N0209_R065_T32TNS_20210126T123456.SAFE"
    (safe / "GRANULE" / "S2B_MSIL1C_20990126T102351_N0209_R065_T32TNS_20990126T123456.SAFE").mkdir(parents=True)
    found = find_products(tmp_path)
    assert list(found) == [("32TNS", "20210116T102351"), ("32TNS", "20210126T102351")]
    assert list(find_products(tmp_path, dates=["20210126T102351"])) == [("32TNS", "20210126T102351")]


def test_two_products_for_one_scene_is_an_error_naming_both(tmp_path):
    first = tmp_path / "S2B_MSIL1C_20220201T102209_N0400_R065_T32TNS_20220201T121212.SAFE.zip"
    second = tmp_path / "S2B_MSIL1C_20220201T102209_N0510_R065_T32TNS_20230301T000000.SAFE.zip"
    first.write_bytes(b"")
    second.write_bytes(b"")
    with pytest.raises(InventoryError) as error:
        find_products(tmp_path)
    assert first.name in str(error.value) and second.name in str(error.value)


NAME = "S2B_MSIL1C_20210116T102351_N0209_R065_T32TNS_20210116T123456"


def test_a_renamed_download_is_named_in_a_warning_and_its_listed_date_fails(tmp_path, caplog):
    (tmp_path / "S2B_MSIL1C_20210126T102351_N0209_R065_T32TNS_20210126T123456.SAFE.zip").write_bytes(b"")
    renamed = tmp_path / f"{NAME}.SAFE (1).zip"
    renamed.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="snowcloud.inventory"):
        with pytest.raises(
            InventoryError, match=r"no product under .* for date 20210116T102351 listed in `tiles`/`dates`"
        ):
            find_products(tmp_path, dates=["20210116T102351", "20210126T102351"])
    assert f"{renamed} looks like a Sentinel-2 L1C product but its name does not parse" in caplog.text


def test_a_listed_tile_without_a_product_is_an_error_naming_it(tmp_path):
    (tmp_path / f"{NAME}.SAFE.zip").write_bytes(b"")
    with pytest.raises(InventoryError, match="for tile 32TMS listed"):
        find_products(tmp_path, tiles=["32TNS", "32TMS"])


@pytest.mark.parametrize("layout", ["missing folder", "empty folder"])
def test_raw_data_without_any_product_is_an_error_naming_the_folder(tmp_path, layout):
    raw = tmp_path / "raw"
    if layout == "empty folder":
        (raw / "sub").mkdir(parents=True)
        (raw / "sub" / "notes.txt").write_text("no product here")
    with pytest.raises(
        InventoryError, match=f"raw_data: {raw} is not a folder|raw_data: no Sentinel-2 L1C product under {raw}"
    ):
        find_products(raw)
