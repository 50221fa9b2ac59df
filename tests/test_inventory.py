import pytest

from snowcloud.inventory import InventoryError, find_products, parse_product_name


def test_parse_product_name_zipped_and_unpacked():
    zipped = parse_product_name("S2B_MSIL1C_20210116T102351_N0209_R065_T32TNS_20210116T123456.SAFE.zip")
    assert (zipped.tile, zipped.date, zipped.processing_baseline, zipped.zipped) == ("32TNS", "20210116T102351", "02.09", True)
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
    assert find_products(tmp_path, tiles=["32TMS"]) == {}


def test_two_products_for_one_scene_is_an_error_naming_both(tmp_path):
    first = tmp_path / "S2B_MSIL1C_20220201T102209_N0400_R065_T32TNS_20220201T121212.SAFE.zip"
    second = tmp_path / "S2B_MSIL1C_20220201T102209_N0510_R065_T32TNS_20230301T000000.SAFE.zip"
    first.write_bytes(b"")
    second.write_bytes(b"")
    with pytest.raises(InventoryError) as error:
        find_products(tmp_path)
    assert first.name in str(error.value) and second.name in str(error.value)
