"""stripedump: save a Linux crash dump fast, striped over several disks.

The library is usable without the CLI: ``stripedump.dump.coordinator.dump(DumpConfig(...))``,
``stripedump.read.join.join(JoinConfig(...))``, ``stripedump.read.join.verify([...])``,
``stripedump.read.info.info([...])``, and ``stripedump.open([...])`` (``read/reader.py``: random
access to a dump without joining it).  The packages, lowest first: runtime, source, levels, format,
remote, dump and read, kdump, mount, tools (docs/architecture.md).  Submodules are imported on
demand so that ``stripedump --help`` stays cheap.
"""

from .version import __version__

__all__ = ["__version__", "open"]


def __getattr__(name):
    """``stripedump.open(members)``: the read-side library (``reader.open``), imported on first use."""
    if name == "open":
        from .read.reader import open as open_dump
        return open_dump
    raise AttributeError(f"module 'stripedump' has no attribute {name!r}")
