"""Scene discovery: which Sentinel-2 L1C products, DEMs and label masks the workflow works on."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

PRODUCT_PATTERN = re.compile(
    r"^(?P<mission>S2[ABCD])_MSIL1C_(?P<date>\d{8}T\d{6})_N(?P<baseline>\d{4})_R(?P<orbit>\d{3})"
    r"_T(?P<tile>\d{2}[A-Z]{3})_(?P<generated>\d{8}T\d{6})(?:\.SAFE(?:\.zip)?|\.zip)$"
)


LOOKS_LIKE_PRODUCT = re.compile(r"^S2[A-D]_MSIL1C_.*(?:\.SAFE|\.zip)", re.IGNORECASE)
PRODUCT_NAME_EXAMPLE = "S2B_MSIL1C_20210116T102351_N0209_R065_T32TNS_20210116T123456.SAFE.zip"
DATE_FORMAT = "%Y%m%dT%H%M%S"  # a product's sensing time, the {date} of every path the workflow writes

log = logging.getLogger(__name__)


class InventoryError(ValueError):
    """Inputs that cannot be matched up: two products for one scene, a missing DEM, a malformed name."""


@dataclass(frozen=True)
class Product:
    """One L1C product, zipped or unpacked, identified by its name."""

    path: Path
    mission: str
    date: str
    baseline: str
    orbit: str
    tile: str
    generated: str

    @property
    def scene(self) -> tuple[str, str]:
        return self.tile, self.date

    @property
    def zipped(self) -> bool:
        return self.path.suffix == ".zip"

    @property
    def processing_baseline(self) -> str:
        """The baseline as written in the metadata, e.g. '04.00'."""
        return f"{self.baseline[:2]}.{self.baseline[2:]}"


def sensing_time(date: str) -> datetime:
    """The UTC sensing time a {date} (20220201T102209) stands for."""
    return datetime.strptime(date, DATE_FORMAT).replace(tzinfo=UTC)


def parse_product_name(path: str | Path) -> Product | None:
    """The product a path names, or None if the name is not an L1C product name."""
    path = Path(path)
    match = PRODUCT_PATTERN.match(path.name)
    return Product(path=path, **match.groupdict()) if match else None


def product_name(mission: str, date: str, baseline: str, orbit: str, tile: str, generated: str) -> str:
    """The SAFE folder name of a product, e.g. S2B_MSIL1C_20210116T102351_N0301_R065_T32TNS_20210116T123456.SAFE."""
    return f"{mission}_MSIL1C_{date}_N{baseline}_R{orbit}_T{tile}_{generated}.SAFE"


def find_products(raw_data: str | Path, tiles: list[str] = (), dates: list[str] = ()) -> dict[tuple[str, str], Product]:
    """Every L1C product under `raw_data` (recursively), keyed by (tile, date), optionally restricted.

    Two products for one tile and date (say a reprocessed baseline beside the original) are an error
    naming both, so that the workflow never silently picks one; so are a `raw_data` without any product
    and a listed tile or date without one. Files that look like products but whose names do not parse
    (a browser's `... .SAFE (1).zip`) are named in a warning.
    """
    root = Path(raw_data)
    if not root.is_dir():
        raise InventoryError(f"raw_data: {root} is not a folder; set raw_data to the folder holding the L1C products")
    found: dict[tuple[str, str], Product] = {}
    any_product = False
    for path in sorted(root.rglob("*")):
        if _inside_safe(path, root):
            continue
        product = parse_product_name(path)
        if product is None:
            if LOOKS_LIKE_PRODUCT.search(path.name):
                log.warning(
                    "%s looks like a Sentinel-2 L1C product but its name does not parse (expected %s): skipped; "
                    "rename it",
                    path,
                    PRODUCT_NAME_EXAMPLE,
                )
            continue
        any_product = True
        if (tiles and product.tile not in tiles) or (dates and product.date not in dates):
            continue
        if product.scene in found:
            other = found[product.scene]
            raise InventoryError(
                f"two products for tile {product.tile} and date {product.date}: {other.path} and {product.path}; "
                "keep one of them (or restrict `dates`)"
            )
        found[product.scene] = product
    if not any_product:
        raise InventoryError(f"raw_data: no Sentinel-2 L1C product under {root} (names like {PRODUCT_NAME_EXAMPLE})")
    _check_listed(root, found, tiles, dates)
    return dict(sorted(found.items()))


def _check_listed(root: Path, found: dict[tuple[str, str], Product], tiles: list[str], dates: list[str]) -> None:
    """Every tile and date the configuration lists has a product."""
    missing = [f"tile {tile}" for tile in tiles if all(product.tile != tile for product in found.values())]
    missing += [f"date {date}" for date in dates if all(product.date != date for product in found.values())]
    if missing:
        raise InventoryError(
            f"no product under {root} for {', '.join(missing)} listed in `tiles`/`dates` "
            f"(found {len(found)} product(s) for the others); add the product(s) or remove the entries"
        )


def _inside_safe(path: Path, root: Path) -> bool:
    return any(parent.suffix == ".SAFE" for parent in path.relative_to(root).parents)


def scene_path(pattern: str, tile: str, date: str | None = None) -> Path:
    """Fill a configured path pattern ({tile}, {date}) for one scene."""
    return Path(pattern.format(tile=tile, date=date) if date else pattern.format(tile=tile))
