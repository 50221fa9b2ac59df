"""The XML files of a Level-1C SAFE product (MTD_MSIL1C.xml, MTD_TL.xml, manifest.safe), laid out as ESA's."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime

from snowcloud.bands import BANDS, RESOLUTION_M

PRODUCT_NAMESPACE = "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-1C.xsd"
TILE_NAMESPACE = "https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-1C_Tile_Metadata.xsd"
QUANTIFICATION_VALUE = 10000
NODATA, SATURATED = 0, 65535

# Per band (BANDS order = ESA band_id 0..12): central wavelength (nm), bandwidth (nm), solar irradiance (W/m2/um).
WAVELENGTH_NM = (442.7, 492.4, 559.8, 664.6, 704.1, 740.5, 782.8, 832.8, 864.7, 945.1, 1373.5, 1613.7, 2202.4)
BANDWIDTH_NM = (21, 66, 36, 31, 15, 15, 20, 106, 21, 20, 31, 91, 175)
SOLAR_IRRADIANCE = (
    1884.69,
    1959.66,
    1823.24,
    1512.06,
    1424.64,
    1287.61,
    1162.08,
    1041.63,
    955.32,
    812.92,
    367.15,
    245.59,
    85.25,
)


def physical_band(band: str) -> str:
    """ESA's physicalBand attribute: B01 -> B1, B8A -> B8A."""
    return "B" + band[1:].lstrip("0")


@dataclass(frozen=True)
class ProductInfo:
    """What the metadata says about one product."""

    name: str  # the .SAFE folder name
    mission: str  # S2A / S2B
    tile: str
    sensing: datetime
    generated: datetime
    baseline: str  # "04.00"
    orbit: int  # relative orbit
    absolute_orbit: int
    radio_add_offset: int | None  # per band, None for baselines before 04.00
    epsg: int
    x0: float
    y0: float
    size: int  # 10 m pixels
    sun_zenith: float
    sun_azimuth: float
    cloudy_percentage: float
    nodata_percentage: float

    @property
    def granule(self) -> str:
        return f"L1C_T{self.tile}_A{self.absolute_orbit:06d}_{_compact(self.sensing)}"

    @property
    def datastrip_id(self) -> str:
        return f"{self.mission}_OPER_MSI_L1C_DS_{self.mission[1:]}PS_{_compact(self.generated)}_S{_compact(self.sensing)}_N{self.baseline}"

    def band_file(self, band: str) -> str:
        """Path of a band's JP2 inside the SAFE folder, without the extension (as IMAGE_FILE gives it)."""
        return f"GRANULE/{self.granule}/IMG_DATA/T{self.tile}_{_compact(self.sensing)}_{band}"


def _compact(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%S")


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _element(parent: ET.Element, tag: str, text: object = None, **attributes: object) -> ET.Element:
    child = ET.SubElement(parent, tag, {key: str(value) for key, value in attributes.items()})
    if text is not None:
        child.text = str(text)
    return child


def _serialise(root: ET.Element) -> bytes:
    ET.indent(root)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def product_metadata(info: ProductInfo) -> bytes:
    """MTD_MSIL1C.xml."""
    ET.register_namespace("n1", PRODUCT_NAMESPACE)
    root = ET.Element(f"{{{PRODUCT_NAMESPACE}}}Level-1C_User_Product")
    general = _element(root, f"{{{PRODUCT_NAMESPACE}}}General_Info")
    product = _element(general, "Product_Info")
    _element(product, "PRODUCT_START_TIME", _iso(info.sensing))
    _element(product, "PRODUCT_STOP_TIME", _iso(info.sensing))
    _element(product, "PRODUCT_URI", info.name)
    _element(product, "PROCESSING_LEVEL", "Level-1C")
    _element(product, "PRODUCT_TYPE", "S2MSI1C")
    _element(product, "PROCESSING_BASELINE", info.baseline)
    _element(product, "GENERATION_TIME", _iso(info.generated))
    datatake = _element(
        product,
        "Datatake",
        datatakeIdentifier=f"G{info.mission}_{_compact(info.sensing)}_{info.absolute_orbit:06d}_N{info.baseline}",
    )
    _element(datatake, "SPACECRAFT_NAME", f"Sentinel-{info.mission[1:]}")
    _element(datatake, "DATATAKE_TYPE", "INS-NOBS")
    _element(datatake, "DATATAKE_SENSING_START", _iso(info.sensing))
    _element(datatake, "SENSING_ORBIT_NUMBER", info.orbit)
    _element(datatake, "SENSING_ORBIT_DIRECTION", "DESCENDING")
    options = _element(product, "Query_Options", completeSingleTile="true")
    _element(options, "PRODUCT_FORMAT", "SAFE_COMPACT")
    granules = _element(_element(product, "Product_Organisation"), "Granule_List")
    granule = _element(
        granules,
        "Granule",
        datastripIdentifier=info.datastrip_id,
        granuleIdentifier=f"{info.mission}_OPER_MSI_L1C_TL_{info.mission[1:]}PS_{_compact(info.generated)}_A{info.absolute_orbit:06d}_T{info.tile}_N{info.baseline}",
        imageFormat="JPEG2000",
    )
    for band in (*BANDS, "TCI"):
        _element(granule, "IMAGE_FILE", info.band_file(band))

    characteristics = _element(general, "Product_Image_Characteristics")
    for text, index in (("NODATA", NODATA), ("SATURATED", SATURATED)):
        special = _element(characteristics, "Special_Values")
        _element(special, "SPECIAL_VALUE_TEXT", text)
        _element(special, "SPECIAL_VALUE_INDEX", index)
    order = _element(characteristics, "Image_Display_Order")
    for channel, band_id in (("RED_CHANNEL", 3), ("GREEN_CHANNEL", 2), ("BLUE_CHANNEL", 1)):
        _element(order, channel, band_id)
    _element(characteristics, "QUANTIFICATION_VALUE", QUANTIFICATION_VALUE, unit="none")
    if info.radio_add_offset is not None:
        offsets = _element(characteristics, "Radiometric_Offset_List")
        for band_id in range(len(BANDS)):
            _element(offsets, "RADIO_ADD_OFFSET", info.radio_add_offset, band_id=band_id)
    conversion = _element(characteristics, "Reflectance_Conversion")
    _element(conversion, "U", "1.0")
    irradiance = _element(conversion, "Solar_Irradiance_List")
    for band_id, value in enumerate(SOLAR_IRRADIANCE):
        _element(irradiance, "SOLAR_IRRADIANCE", value, bandId=band_id, unit="W/m²/µm")
    spectral = _element(characteristics, "Spectral_Information_List")
    for band_id, band in enumerate(BANDS):
        information = _element(spectral, "Spectral_Information", bandId=band_id, physicalBand=physical_band(band))
        _element(information, "RESOLUTION", RESOLUTION_M[band])
        wavelength = _element(information, "Wavelength")
        centre, width = WAVELENGTH_NM[band_id], BANDWIDTH_NM[band_id]
        _element(wavelength, "MIN", round(centre - width / 2), unit="nm")
        _element(wavelength, "MAX", round(centre + width / 2), unit="nm")
        _element(wavelength, "CENTRAL", centre, unit="nm")
    _element(characteristics, "REFERENCE_BAND", 1)

    quality = _element(root, f"{{{PRODUCT_NAMESPACE}}}Quality_Indicators_Info")
    _element(quality, "Cloud_Coverage_Assessment", f"{info.cloudy_percentage:.2f}")
    return _serialise(root)


def tile_metadata(info: ProductInfo) -> bytes:
    """GRANULE/*/MTD_TL.xml."""
    ET.register_namespace("n1", TILE_NAMESPACE)
    root = ET.Element(f"{{{TILE_NAMESPACE}}}Level-1C_Tile_ID")
    general = _element(root, f"{{{TILE_NAMESPACE}}}General_Info")
    _element(
        general,
        "TILE_ID",
        f"{info.mission}_OPER_MSI_L1C_TL_{info.mission[1:]}PS_{_compact(info.generated)}_A{info.absolute_orbit:06d}_T{info.tile}_N{info.baseline}",
        metadataLevel="Brief",
    )
    _element(general, "DATASTRIP_ID", info.datastrip_id, metadataLevel="Standard")
    _element(general, "SENSING_TIME", _iso(info.sensing), metadataLevel="Standard")
    geometric = _element(root, f"{{{TILE_NAMESPACE}}}Geometric_Info")
    geocoding = _element(geometric, "Tile_Geocoding", metadataLevel="Brief")
    hemisphere = "N" if info.epsg < 32700 else "S"
    _element(geocoding, "HORIZONTAL_CS_NAME", f"WGS84 / UTM zone {info.epsg % 100}{hemisphere}")
    _element(geocoding, "HORIZONTAL_CS_CODE", f"EPSG:{info.epsg}")
    for resolution in (10, 20, 60):
        size = _element(geocoding, "Size", resolution=resolution)
        _element(size, "NROWS", info.size * 10 // resolution)
        _element(size, "NCOLS", info.size * 10 // resolution)
    for resolution in (10, 20, 60):
        position = _element(geocoding, "Geoposition", resolution=resolution)
        _element(position, "ULX", f"{info.x0:.0f}")
        _element(position, "ULY", f"{info.y0:.0f}")
        _element(position, "XDIM", resolution)
        _element(position, "YDIM", -resolution)
    angles = _element(_element(geometric, "Tile_Angles", metadataLevel="Standard"), "Mean_Sun_Angle")
    _element(angles, "ZENITH_ANGLE", f"{info.sun_zenith:.6f}", unit="deg")
    _element(angles, "AZIMUTH_ANGLE", f"{info.sun_azimuth:.6f}", unit="deg")
    quality = _element(
        _element(root, f"{{{TILE_NAMESPACE}}}Quality_Indicators_Info", metadataLevel="Standard"), "Image_Content_QI"
    )
    _element(quality, "NODATA_PIXEL_PERCENTAGE", f"{info.nodata_percentage:.6f}")
    _element(quality, "CLOUDY_PIXEL_PERCENTAGE", f"{info.cloudy_percentage:.4f}")
    return _serialise(root)


def manifest(info: ProductInfo, files: dict[str, tuple[int, str]]) -> bytes:
    """manifest.safe: the data objects of the product with their size and MD5 checksum."""
    root = ET.Element(
        "xfdu:XFDU", {"xmlns:xfdu": "urn:ccsds:schema:xfdu:1", "version": "esa/safe/sentinel/sentinel-2/msi/level-1c"}
    )
    package = _element(root, "informationPackageMap")
    unit = _element(
        package, "xfdu:contentUnit", unitType="Product_Level-1C", textInfo="SENTINEL-2 MSI Level-1C User Product"
    )
    section = _element(root, "dataObjectSection")
    for index, (path, (size, md5)) in enumerate(sorted(files.items())):
        identifier = f"object_{index:03d}"
        _element(unit, "dataObjectPointer", dataObjectID=identifier)
        stream = _element(
            _element(section, "dataObject", ID=identifier), "byteStream", mimeType="application/octet-stream", size=size
        )
        _element(stream, "fileLocation", locatorType="URL", href=f"./{path}")
        _element(stream, "checksum", md5, checksumName="MD5")
    return _serialise(root)
