"""A join's settings, built once at the CLI edge (or by a library caller) and frozen.

Why: as for the dump (dump/config.py), user choices are validated in one place
and the read side takes a frozen object.
"""

from __future__ import annotations

from ..errors import UsageError
from ..format.codecs import CodecSpec
from ..runtime.machine import usable_cpus
from ..runtime.plain import Frozen

JOIN_FORMATS = ("elf", "kdump", "flat")


class JoinConfig(Frozen):
    __slots__ = ("members", "output", "force", "workers", "format", "codec", "allow_incomplete")

    def __init__(self, members: tuple[str, ...], output: str, force: bool = False, workers: int = 0,
                 format: str = "elf",                 # elf, kdump or flat (JOIN_FORMATS)
                 codec: CodecSpec | None = None,      # kdump/flat page codec; None: the dump's, else lzo
                 allow_incomplete: bool = False):     # recover what reached disk; zeros (holes) for the rest
        if format not in JOIN_FORMATS:
            raise UsageError(f"unknown join format {format!r}; choose one of {', '.join(JOIN_FORMATS)}")
        if codec is not None and format == "elf":
            raise UsageError("--codec applies to --format kdump or flat only (ELF output is not compressed)")
        if output == "-" and format != "flat":
            raise UsageError(f"{format} output is written out of order and cannot go to standard "
                             "output; give a file name, or use --format flat")
        for k, v in (("members", members), ("output", output), ("force", force), ("workers", workers),
                     ("format", format), ("codec", codec), ("allow_incomplete", allow_incomplete)):
            object.__setattr__(self, k, v)

    @property
    def nworkers(self) -> int:
        return self.workers or usable_cpus()
