"""The version of stripedump, in one place: the package metadata (pyproject.toml reads it from here),
``stripedump --version`` and the manifest's ``tool`` field.

A module of its own, importing nothing, so that the lowest layers (format/manifest.py) can name the
version without importing the package's top (``stripedump.open`` reaches the read side).
"""

__version__ = "0.1.0"
