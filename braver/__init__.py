"""braver: patch-based tumor segmentation with the networks of Havaei et al. (2017)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("braver")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
