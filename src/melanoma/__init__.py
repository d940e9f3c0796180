"""melanoma: train, evaluate and serve melanoma classifiers from dermoscopic images and patient metadata."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("melanoma")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
