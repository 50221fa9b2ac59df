"""snowcloud: snow, cloud and water masks from Sentinel-2 L1C scenes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("snowcloud")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
