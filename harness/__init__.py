"""pfmbench: a reproducible dense-prediction benchmark of pathology foundation models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pfmbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
