"""stripedump: save a Linux crash dump fast, striped over several disks.

The library is usable without the CLI: ``pipeline.dump(DumpConfig(...))``,
``join.join(JoinConfig(...))``, ``join.verify([...])``, ``info.info([...])``.
Submodules are imported on demand so that ``stripedump --help`` stays cheap.
"""

__version__ = "0.1.0"
