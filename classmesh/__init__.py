"""The classmesh command line: the composition root that builds every service from config."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("classmesh")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+src"
