"""stripedump: save a Linux crash dump fast, striped over several disks.

The library is usable without the CLI: ``pipeline.dump(DumpConfig(...))``,
``join.join(JoinConfig(...))``, ``join.verify([...])``, ``info.info([...])``,
``stripedump.open([...])`` (``reader.py``: random access to a dump without joining it).
Submodules are imported on demand so that ``stripedump --help`` stays cheap.
"""

__version__ = "0.1.0"


def __getattr__(name):
    """``stripedump.open(members)``: the read-side library (``reader.open``), imported on first use."""
    if name == "open":
        from .reader import open as open_dump
        return open_dump
    raise AttributeError(f"module 'stripedump' has no attribute {name!r}")
