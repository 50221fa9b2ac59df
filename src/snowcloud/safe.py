"""Reading a Sentinel-2 L1C SAFE product: zipped (read in place through GDAL's /vsizip/) or unpacked.

`open_safe` finds MTD_MSIL1C.xml and the 13 band files GRANULE/*/IMG_DATA/T{tile}_{date}_{band}.jp2,
parses the processing baseline, quantification value and per-band RADIO_ADD_OFFSET (by local tag names, so
both ESA's namespaced XML and plain XML work), checks every band's grid against B02's, that no band file is
another band's (a link), and that the band files and the metadata are those the product's manifest.safe
declares (size and MD5 or SHA3-256 checksum, read in the zip's CRC pass). Problems are raised as SafeError
naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import xml.etree.ElementTree as ET
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError

from snowcloud.bands import BANDS, RESOLUTION_M
from snowcloud.inventory import parse_product_name

log = logging.getLogger(__name__)

METADATA_NAME = "MTD_MSIL1C.xml"
MANIFEST_NAME = "manifest.safe"
# The checksums a manifest may declare (checksumName) and the hashlib algorithm of each.
CHECKSUMS = {"MD5": "md5", "SHA3-256": "sha3_256"}
BAND_FILE = re.compile(
    r"(?:^|/)GRANULE/(?P<granule>[^/]+)/IMG_DATA/T(?P<tile>\d{2}[A-Z]{3})_(?P<date>\d{8}T\d{6})_(?P<band>B\d[\dA])\.jp2$"
)
ZIP_METHODS_GDAL_READS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
CRC_CHUNK = 1 << 22
QUANTIFICATION_VALUE = 10000  # reflectance = (DN + RADIO_ADD_OFFSET) / QUANTIFICATION_VALUE in every L1C product


class SafeError(ValueError):
    """A product that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class SafeProduct:
    """What the preprocess stage needs to know about one L1C product."""

    path: Path  # the .SAFE.zip or .SAFE folder
    name: str  # PRODUCT_URI, e.g. S2B_MSIL1C_..._T32TNS_....SAFE
    tile: str
    date: str
    processing_baseline: str  # "04.00"
    quantification_value: float
    offsets: dict[str, int]  # RADIO_ADD_OFFSET by band name; 0 where the metadata has none (baseline < 04.00)
    band_members: dict[str, str]  # band file paths inside the product, by band name, in BANDS order
    band_paths: dict[str, str]  # the same as GDAL opens them (/vsizip/... for a zip)
    crs: CRS
    transform: Affine  # of B02's 10 m grid
    width: int
    height: int

    def band_source(self, band: str) -> str:
        """A band file as a person finds it: '.../GRANULE/.../T32TNS_..._B05.jp2 in x.SAFE.zip'."""
        return f"{self.band_members[band]} in {self.path}"


def open_safe(path: str | Path) -> SafeProduct:
    """Open a zipped or unpacked L1C product and check that it is complete and consistent."""
    path = Path(path)
    if path.is_dir():
        members = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        declared = _declared_files(path, members)
        digests = None  # read below, for the files the manifest declares
        root = str(path)
    elif path.is_file():
        members, declared, digests = _zip_members(path)
        root = f"/vsizip/{path.resolve()}"
    else:
        raise SafeError(f"{path}: no such product (neither a .SAFE folder nor a zip file)")

    metadata_member = _metadata_member(path, members)
    metadata = parse_metadata(_read_member(path, metadata_member), f"{path}: {metadata_member}")
    bands = _band_members(path, members)
    tile, date = next(iter(bands.values()))[1:]
    _check_name(path, tile, date)
    band_members = {band: member for band, (member, _, _) in bands.items()}
    band_paths = {band: f"{root}/{member}" for band, member in band_members.items()}
    if path.is_dir():
        _check_band_files_distinct(path, band_members)
    crs, transform, width, height = _check_grids(path, band_paths)
    read = {**band_members, "metadata": metadata_member}
    _check_declared(path, read, declared, digests)
    folder = metadata_member.split("/")[0] if "/" in metadata_member else path.name.removesuffix(".zip")
    return SafeProduct(
        path=path,
        name=metadata["name"] or folder,
        tile=tile,
        date=date,
        processing_baseline=metadata["baseline"],
        quantification_value=metadata["quantification"],
        offsets=metadata["offsets"],
        band_members=band_members,
        band_paths=band_paths,
        crs=crs,
        transform=transform,
        width=width,
        height=height,
    )


def _check_name(path: Path, tile: str, date: str) -> None:
    """The tile and date a product's band files hold are those of its name (which the workflow planned the
    scene by): a product saved under another's name would otherwise become that scene."""
    planned = parse_product_name(path)
    if planned is not None and (planned.tile, planned.date) != (tile, date):
        raise SafeError(
            f"{path}: its name says tile {planned.tile} sensed {planned.date}, its band files hold tile {tile} sensed "
            f"{date}; a product saved under another's name? Download {path.name} again or give it its own name"
        )


def _zip_members(path: Path) -> tuple[list[str], dict[str, Declared], dict[str, str]]:
    """Names in a zip, after checking it is whole and undamaged (CRC of the band and XML files) and that
    GDAL can read its members in place; the files its manifest declares, and the checksum of each of them
    that is a band or XML file (computed in the same read as the CRC)."""
    if not zipfile.is_zipfile(path):
        raise SafeError(f"{path}: not a zip file, or a truncated one (no zip directory at its end); download it again")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise SafeError(f"{path}: corrupt zip file ({error})") from error
    with archive:
        infos = archive.infolist()
        members = [info.filename for info in infos if not info.is_dir()]
        declared = _declared_files(path, members, archive)
        digests = {}
        size = path.stat().st_size
        for info in infos:
            if not info.filename.endswith((".jp2", ".xml")):
                continue
            if info.header_offset + info.compress_size > size:
                raise SafeError(f"{path}: truncated zip file ({info.filename} extends past the end of the file)")
            if info.compress_type not in ZIP_METHODS_GDAL_READS:
                raise SafeError(
                    f"{path}: {info.filename} is compressed with zip method {info.compress_type}, which GDAL cannot read; re-zip with deflate"
                )
            expected = declared.get(info.filename)
            try:
                digest = _read_through(archive.open(info), expected.algorithm if expected else None)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as error:
                raise SafeError(f"{path}: corrupt zip file ({info.filename}: {error}); download it again") from error
            if digest is not None:
                digests[info.filename] = digest
    return members, declared, digests


def _read_through(handle: BinaryIO, algorithm: str | None) -> str | None:
    """Read a file through, its checksum by `algorithm` (a hashlib name) if one is given. Reading a zip member
    through makes zipfile check its local header and CRC-32: a damaged JP2 otherwise decodes without an error
    into wrong pixels; this costs a few % of decoding it, the checksum (MD5) about as much again."""
    digest = hashlib.new(algorithm) if algorithm else None
    with handle:
        while chunk := handle.read(CRC_CHUNK):
            if digest is not None:
                digest.update(chunk)
    return None if digest is None else digest.hexdigest()


@dataclass(frozen=True)
class Declared:
    """A file as the product's manifest.safe declares it."""

    size: int | None
    algorithm: str | None  # hashlib's name of its checksum; None where the manifest gives none snowcloud knows
    checksum: str | None


def _declared_files(path: Path, members: list[str], archive: zipfile.ZipFile | None = None) -> dict[str, Declared]:
    """The files manifest.safe declares, by member name, with their size and checksum; {} without a manifest."""
    manifests = [m for m in members if m.rsplit("/", 1)[-1] == MANIFEST_NAME and m.count("/") <= 1]
    if len(manifests) != 1:
        return {}
    manifest = manifests[0]
    text = archive.read(manifest) if archive is not None else (path / manifest).read_bytes()
    try:
        root = ET.fromstring(text)
    except ET.ParseError as error:
        raise SafeError(f"{path}: {manifest} is not valid XML ({error}); download the product again") from error
    prefix = manifest[: -len(MANIFEST_NAME)]
    declared = {}
    for stream in (element for element in root.iter() if _local(element.tag) == "byteStream"):
        children = {_local(child.tag): child for child in stream}
        location = children.get("fileLocation")
        if location is None or not location.get("href"):
            continue
        member = prefix + os.path.normpath(location.get("href")).replace(os.sep, "/")
        checksum = children.get("checksum")
        name = checksum.get("checksumName", "").upper() if checksum is not None else ""
        size = stream.get("size")
        declared[member] = Declared(
            int(size) if size and size.isdigit() else None,
            CHECKSUMS.get(name),
            (checksum.text or "").strip().lower() if checksum is not None and name in CHECKSUMS else None,
        )
    return declared


def _check_declared(
    path: Path, read: dict[str, str], declared: dict[str, Declared], digests: dict[str, str] | None
) -> None:
    """The files snowcloud reads (bands by name, and the metadata) have the size and checksum the manifest
    declares; `digests`: those computed already (a zip's CRC pass), else they are read now (a folder)."""
    for what, member in read.items():
        expected = declared.get(member)
        if expected is None:
            continue
        name = f"band {what} ({member})" if what != "metadata" else member
        size = path.joinpath(member).stat().st_size if digests is None else None
        if expected.size is not None and size is not None and size != expected.size:
            raise SafeError(
                f"{path}: {name} is {size} bytes, the product's {MANIFEST_NAME} declares {expected.size}: a damaged "
                "or replaced file; download or unpack the product again"
            )
        if expected.algorithm is None:
            continue
        found = (
            digests.get(member) if digests is not None else _read_through(open(path / member, "rb"), expected.algorithm)
        )
        if found != expected.checksum:
            algorithm = next(key for key, value in CHECKSUMS.items() if value == expected.algorithm)
            raise SafeError(
                f"{path}: {name} does not match the product's {MANIFEST_NAME} ({algorithm} {found}, declared "
                f"{expected.checksum}): a damaged or replaced file; download or unpack the product again"
            )


def _check_band_files_distinct(path: Path, band_members: dict[str, str]) -> None:
    """Each band of an unpacked product is a file of its own: a band that is a link (symbolic or hard) to
    another band's file would be read as that band."""
    owner: dict[tuple[int, int], str] = {}
    for band, member in band_members.items():
        status = (path / member).stat()
        other = owner.setdefault((status.st_dev, status.st_ino), band)
        if other == band:
            continue
        links = [b for b in (other, band) if (path / band_members[b]).is_symlink()]
        if len(links) == 1:
            linked, target = links[0], band if links[0] == other else other
            raise SafeError(
                f"{path}: band {linked} ({band_members[linked]}) is a link to the file of band {target} "
                f"({band_members[target]}): it would be read as {target}; unpack the product again"
            )
        raise SafeError(
            f"{path}: bands {other} ({band_members[other]}) and {band} ({band_members[band]}) are one file (links to "
            "it): one would be read as the other; unpack the product again"
        )


def _metadata_member(path: Path, members: list[str]) -> str:
    candidates = [m for m in members if m.rsplit("/", 1)[-1] == METADATA_NAME and m.count("/") <= 1]
    if not candidates:
        raise SafeError(f"{path}: no {METADATA_NAME} at the top of the product (is it a Level-1C SAFE product?)")
    if len(candidates) > 1:
        raise SafeError(f"{path}: several {METADATA_NAME} files ({', '.join(candidates)}): one product per zip")
    return candidates[0]


def _read_member(path: Path, member: str) -> bytes:
    if path.is_dir():
        return (path / member).read_bytes()
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.read(member)
    except (zipfile.BadZipFile, OSError, EOFError) as error:  # CRC mismatch, damaged data
        raise SafeError(f"{path}: cannot read {member} ({error})") from error


def _band_members(path: Path, members: list[str]) -> dict[str, tuple[str, str, str]]:
    """(member, tile, date) of each of the 13 bands, checking there is exactly one granule with all of them."""
    found: dict[str, list[tuple[str, str, str, str]]] = {}
    for member in members:
        match = BAND_FILE.search(member)
        if match and match["band"] in BANDS:
            found.setdefault(match["band"], []).append((member, match["tile"], match["date"], match["granule"]))
    granules = sorted({granule for entries in found.values() for *_, granule in entries})
    if len(granules) > 1:
        raise SafeError(f"{path}: {len(granules)} granules ({', '.join(granules)}); expected one tile per product")
    missing = [band for band in BANDS if band not in found]
    if missing:
        where = f"GRANULE/{granules[0]}/IMG_DATA/" if granules else "GRANULE/*/IMG_DATA/"
        raise SafeError(
            f"{path}: band file(s) {', '.join(missing)} missing (expected {where}T{{tile}}_{{date}}_{{band}}.jp2)"
        )
    scenes = {(tile, date) for entries in found.values() for _, tile, date, _ in entries}
    if len(scenes) > 1:
        raise SafeError(f"{path}: band files of different tiles or dates: {sorted(scenes)}")
    return {band: found[band][0][:3] for band in BANDS}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_metadata(xml: bytes, where: str) -> dict:
    """Product name, processing baseline, quantification value and per-band offsets from MTD_MSIL1C.xml.

    Band ids (RADIO_ADD_OFFSET band_id) are mapped to names through Spectral_Information when present, else by
    ESA's order B01..B12 (BANDS). The offset is taken from the XML only: none means 0.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as error:
        raise SafeError(f"{where}: not valid XML ({error})") from error
    elements: dict[str, list[ET.Element]] = {}
    for element in root.iter():
        elements.setdefault(_local(element.tag), []).append(element)

    def text(tag: str, required: bool = True) -> str | None:
        if tag not in elements or not (elements[tag][0].text or "").strip():
            if required:
                raise SafeError(f"{where}: no {tag} in the metadata")
            return None
        return elements[tag][0].text.strip()

    def number(value: str | None, what: str, kind: type = float) -> float:
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise SafeError(f"{where}: {what} is {value!r}, not a number") from None

    band_names = dict(enumerate(BANDS))
    for info in elements.get("Spectral_Information", []):
        physical = info.get("physicalBand", "")
        if re.fullmatch(r"B\d[\dA]?", physical):
            band_id = number(info.get("bandId"), f"the bandId of Spectral_Information {physical}", int)
            band_names[band_id] = f"B{physical[1:].zfill(2)}" if physical[-1] != "A" else physical
    offsets = dict.fromkeys(BANDS, 0)
    for element in elements.get("RADIO_ADD_OFFSET", []):
        band_id = number(element.get("band_id", -1), "the band_id of a RADIO_ADD_OFFSET", int)
        band = band_names.get(band_id)
        if band in offsets:
            offsets[band] = int(number(element.text, f"RADIO_ADD_OFFSET of band_id {band_id}"))
    baseline = text("PROCESSING_BASELINE")
    if baseline >= "04.00" and "RADIO_ADD_OFFSET" not in elements:
        log.warning(
            "%s: processing baseline %s but no RADIO_ADD_OFFSET: using offset 0 as the metadata says", where, baseline
        )
    quantification = number(text("QUANTIFICATION_VALUE"), "QUANTIFICATION_VALUE")
    if quantification != QUANTIFICATION_VALUE:
        raise SafeError(
            f"{where}: QUANTIFICATION_VALUE is {quantification:g}; snowcloud reads reflectance as DN / "
            f"{QUANTIFICATION_VALUE} (the value of every L1C product so far, which the normalisations, baselines "
            "and quicklooks assume): a product with another scale cannot be used as it is"
        )
    return {
        "name": text("PRODUCT_URI", required=False),
        "baseline": baseline,
        "quantification": quantification,
        "offsets": offsets,
    }


def _check_grids(path: Path, band_paths: dict[str, str]) -> tuple[CRS, Affine, int, int]:
    """B02's CRS, transform and size, after checking every band lies on the same footprint at its resolution."""
    grids = {}
    for band, band_path in band_paths.items():
        try:
            with rasterio.open(band_path) as source:
                grids[band] = (source.crs, source.transform, source.width, source.height)
        except RasterioIOError as error:
            raise SafeError(f"{path}: cannot open band {band} ({band_path}): {error}") from error
    crs, transform, width, height = grids["B02"]
    if crs is None:
        raise SafeError(f"{path}: band B02 has no coordinate reference system")
    for band, (band_crs, band_transform, band_width, band_height) in grids.items():
        resolution = RESOLUTION_M[band]
        expected = (width * 10 / resolution, height * 10 / resolution)
        if (band_width, band_height) != expected:
            raise SafeError(
                f"{path}: band {band} is {band_width} x {band_height} pixels; at {resolution} m it must be "
                f"{expected[0]:g} x {expected[1]:g} (B02 is {width} x {height} at 10 m)"
            )
        if band_crs != crs:
            raise SafeError(f"{path}: band {band} is in {band_crs}, B02 in {crs}: all bands must share the tile's CRS")
        if not band_transform.almost_equals(transform @ Affine.scale(resolution / 10)):
            raise SafeError(
                f"{path}: band {band} is not aligned with B02 (transform {tuple(band_transform)[:6]} at {resolution} m)"
            )
    return crs, transform, width, height
