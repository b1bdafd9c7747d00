"""One codec interface and a registry of the codecs stripedump knows.

Why: every other module names a codec only through this registry (by name on
the command line, by its one-byte ID on disk), so adding a codec is one class
here and nothing else.  Optional libraries are imported only when a codec is
first used, which keeps ``stripedump --help`` cheap in a capture kernel and
lets stripedump run with just the standard library's zlib when a package is
missing (the chosen codec then fails with a clear CodecUnavailable).

Formats are the ones makedumpfile writes per page, so that one-page blocks can
later be copied into kdump-compressed files as they are: zlib stream (level 1
by default), LZO1X-1 without python-lzo's header, raw snappy, zstd frame.
LZ4 is an LZ4 block without size prefix (kdump has no LZ4 flag; join
transcodes it).

Straight into the slot (issue 12): where the library can write into a
caller's buffer (cramjam's ``*_into`` functions for lz4 and snappy), a codec
offers ``compress_into`` / ``decompress_into`` and encode.py / decode.py use them, which
saves a bytes object and a copy per page.  cramjam's snappy writes the same
bytes as python-snappy (which wraps it); its LZ4 is another build of the LZ4
library whose blocks are valid LZ4 blocks but not always the same bytes
(about 1% larger on memory-like data, 15% faster per page).  zstd stays on
zstandard: cramjam's ``compress_into`` builds a new context per call (2.5x
slower per 4 KiB page); zlib and python-lzo have no such API.

What the user chose is a spec, validated once at the CLI edge: ``CodecSpec``
(one codec and level) or ``AutoSpec`` (``--codec auto``: a ladder of codecs
the dump chooses from per chunk, dump/autocodec.py), behind one interface
(``Spec``); ``parse_codec`` returns either.

Thread-safety: a Codec instance is used by one process at a time.
"""

from __future__ import annotations

import abc
import functools
import zlib

from ..errors import CodecUnavailable, UsageError
from ..runtime.plain import Frozen


class Codec(abc.ABC):
    ID: int = -1
    name: str = ""
    kdump_flag: int | None = None      # DUMP_DH_COMPRESSED_* bit, if kdump has one
    default_level: int | None = None
    levels: range | None = None
    wants_bytes = False       # compress() needs a bytes object, not any buffer
    libraries: tuple = ()     # top-level modules, any one of which it can work with (() = always)
    # compress_into(data, out) -> bytes written: compress one block into the start of ``out``,
    # which must hold at least into_bound(len(data)) bytes; None when the library cannot
    compress_into = None
    # decompress_into(data, out) -> bytes written: ``out`` is exactly the block's size; a block
    # that would expand past it raises.  None when the library cannot
    decompress_into = None

    def __init__(self, level: int | None = None):
        self.level = self.default_level if level is None else level

    @abc.abstractmethod
    def compress(self, data) -> bytes:
        """Compress one block (any buffer); the result may be any buffer."""

    @abc.abstractmethod
    def decompress(self, data, size: int) -> bytes:
        """Decompress one block that must expand to exactly ``size`` bytes."""

    def into_bound(self, n: int) -> int:
        """Room ``compress_into`` needs for an ``n``-byte block."""
        return n

    def __repr__(self) -> str:
        return self.spec

    @property
    def spec(self) -> str:
        return self.name if self.level in (None, self.default_level) else f"{self.name}:{self.level}"


class NoneCodec(Codec):
    ID, name = 0, "none"

    def compress(self, data) -> bytes:
        return data

    def decompress(self, data, size: int) -> bytes:
        return bytes(data)


class ZlibCodec(Codec):
    """zlib streams; levels 0-3 are made by ISA-L when python-isal is installed.

    ISA-L writes ordinary zlib streams (any zlib inflates them, crash and
    makedumpfile included) 5x faster than zlib's level 1 per 4 KiB page at
    the same ratio (measured: 352 vs 65 MB/s on the synthetic mix); zlib's
    per-call stream setup dominates at page size.
    """
    ID, name, kdump_flag = 1, "zlib", 0x01
    default_level, levels = 1, range(0, 10)

    def __init__(self, level=None):
        super().__init__(level)
        self._compress = functools.partial(zlib.compress, level=self.level)
        if self.level <= 3:
            try:
                from isal import isal_zlib
                self._compress = functools.partial(isal_zlib.compress, level=self.level)
            except ImportError:
                pass

    def compress(self, data) -> bytes:
        return self._compress(data)

    def decompress(self, data, size: int) -> bytes:
        d = zlib.decompressobj()
        out = d.decompress(data, size)
        if d.unconsumed_tail or d.unused_data or not d.eof:
            raise ValueError("zlib stream longer than the block or truncated")
        return out


class LzoCodec(Codec):
    ID, name, kdump_flag = 2, "lzo", 0x02
    libraries = ("lzo",)
    wants_bytes = True        # python-lzo parses its input with "s#"

    def __init__(self, level=None):
        super().__init__(level)
        self._lzo = _need("lzo", "python-lzo")

    def compress(self, data) -> bytes:
        return self._lzo.compress(data if type(data) is bytes else bytes(data), 1, False)

    def decompress(self, data, size: int) -> bytes:
        return self._lzo.decompress(bytes(data), False, size)


class SnappyCodec(Codec):
    ID, name, kdump_flag = 3, "snappy", 0x04
    libraries = ("cramjam", "snappy")

    def __init__(self, level=None):
        super().__init__(level)
        try:   # cramjam is what python-snappy wraps; calling it directly saves a copy
            import cramjam
            self._c, self._d = cramjam.snappy.compress_raw, cramjam.snappy.decompress_raw
            self.compress_into = cramjam.snappy.compress_raw_into
            self.decompress_into = cramjam.snappy.decompress_raw_into
        except ImportError:
            snappy = _need("snappy", "python-snappy")
            self._c, self._d = snappy.compress, lambda b: snappy.uncompress(bytes(b))

    def compress(self, data) -> bytes:
        return self._c(data)

    def decompress(self, data, size: int) -> bytes:
        return bytes(self._d(data))

    def into_bound(self, n: int) -> int:
        return 32 + n + n // 6        # snappy's MaxCompressedLength, which compress_raw_into requires


class Lz4Codec(Codec):
    ID, name = 4, "lz4"
    libraries = ("cramjam", "lz4")

    def __init__(self, level=None):
        super().__init__(level)
        try:
            import cramjam
            self.compress_into = functools.partial(cramjam.lz4.compress_block_into, store_size=False)
            self.decompress_into = cramjam.lz4.decompress_block_into
            self._block = None    # python-lz4 on first compress() or decompress(): 10 ms a process
        except ImportError:
            self._block = _need("lz4.block", "lz4")

    def _lib(self):
        if self._block is None:
            self._block = _need("lz4.block", "lz4")
        return self._block

    def compress(self, data) -> bytes:
        return self._lib().compress(data, store_size=False)

    def decompress(self, data, size: int) -> bytes:
        return self._lib().decompress(data, uncompressed_size=size)

    def into_bound(self, n: int) -> int:
        return n + n // 255 + 16      # LZ4_COMPRESSBOUND


class ZstdCodec(Codec):
    ID, name, kdump_flag = 5, "zstd", 0x20
    libraries = ("zstandard",)
    default_level, levels = 1, range(-7, 23)

    def __init__(self, level=None):
        super().__init__(level)
        zstd = _need("zstandard", "zstandard")
        self._c = zstd.ZstdCompressor(level=self.level)
        self._d = zstd.ZstdDecompressor()

    def compress(self, data) -> bytes:
        return self._c.compress(data)

    def decompress(self, data, size: int) -> bytes:
        return self._d.decompress(data, max_output_size=size)


_CODECS = (NoneCodec, ZlibCodec, LzoCodec, SnappyCodec, Lz4Codec, ZstdCodec)
BY_NAME = {c.name: c for c in _CODECS}
BY_ID = {c.ID: c for c in _CODECS}
NAMES = tuple(BY_NAME)


def _findable(module: str) -> bool:
    import sys
    if module in sys.modules:
        return sys.modules[module] is not None      # None: an import that was blocked
    from importlib.util import find_spec
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _need(module: str, package: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise CodecUnavailable(
            f"codec library {package!r} is not installed ({e}); "
            f"install it or choose another --codec") from None


class Spec(Frozen):
    """What ``--codec`` chose: one codec (CodecSpec) or ``auto`` over a ladder of them (AutoSpec).

    The one interface the dump uses, whichever was chosen (no probing for
    attributes):

    * ``is_auto``: the codec is chosen per chunk (dump/autocodec.py's
      Controller picks a ``ladder`` index for each);
    * ``ladder``: the codecs a chunk may get, as CodecSpecs; ``start``: the
      index used until there are measurements (and for a plain codec, 0);
    * ``resolve()``: the spec a dump runs with (auto's default ladder less
      the codecs whose library is missing); ``make()``: the start codec's
      instance (a missing library raises CodecUnavailable); ``make_all()``:
      every codec of the ladder made once in this process;
    * ``codec_id``, ``stored_level``: what the member header names.
    """
    __slots__ = ()
    is_auto = False
    start = 0

    @property
    def ladder(self) -> tuple:
        return (self,)

    def resolve(self) -> "Spec":
        return self

    def make_all(self) -> None:
        """Make every codec of the ladder once in this process: a library that is found but does
        not load fails here, before anything is written, and forked workers inherit the imports."""
        for s in self.ladder:
            s.make()


class CodecSpec(Spec):
    """A validated codec choice, e.g. ``zstd:3``; stored on disk as (ID, level)."""
    __slots__ = ("name", "level")

    def __init__(self, name: str, level: int | None = None):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "level", level)

    @classmethod
    def parse(cls, text: str) -> "CodecSpec":
        name, _, lvl = text.strip().lower().partition(":")
        if name not in BY_NAME:
            raise UsageError(f"unknown codec {text!r}; choose one of {', '.join(NAMES)}")
        codec_cls = BY_NAME[name]
        level = None
        if lvl:
            if codec_cls.levels is None:
                raise UsageError(f"codec {name} takes no level (got {text!r})")
            try:
                level = int(lvl)
            except ValueError:
                raise UsageError(f"codec level must be an integer (got {text!r})") from None
            if level not in codec_cls.levels:
                raise UsageError(f"{name} level must be in {codec_cls.levels.start}.."
                                 f"{codec_cls.levels.stop - 1} (got {level})")
        return cls(name, level)

    @property
    def codec_id(self) -> int:
        return BY_NAME[self.name].ID

    @property
    def stored_level(self) -> int:
        """The level as stored on disk (signed byte; 0 when the codec has none)."""
        c = BY_NAME[self.name]
        return 0 if c.default_level is None else (c.default_level if self.level is None else self.level)

    def make(self) -> Codec:
        return BY_NAME[self.name](self.level)

    def findable(self) -> bool:
        """Whether its library is there, found without importing it (``make`` imports it: zstandard
        alone pulls in typing and platform, which a dump that never uses it should not pay)."""
        libs = BY_NAME[self.name].libraries
        return not libs or any(_findable(m) for m in libs)

    def __str__(self) -> str:
        return self.name if self.level is None else f"{self.name}:{self.level}"


DEFAULT_LADDER = ("none", "lz4", "zstd:1", "zstd:3", "zstd:9")
# auto's list of codecs: ``auto:lz4+zstd:3``, the one syntax of dump's --codec and bench's --codecs
# (whose own list is split at commas); ``auto:lz4,zstd:3``, the older form, is taken as the same
AUTO_SEP, AUTO_SEP_ALIAS = "+", ","


class AutoSpec(Spec):
    """``auto`` or ``auto:CODEC+CODEC+...``: the ladder the dump's controller chooses from per chunk.

    A plain frozen class, not a dataclass: auto is the default codec, so this is on every
    dump's path (issue 12's fixed cost, tests/test_fixedcost.py)."""
    __slots__ = ("ladder", "explicit")
    is_auto = True

    def __init__(self, ladder: tuple, explicit: bool = False):
        object.__setattr__(self, "ladder", tuple(ladder))      # CodecSpec, in the order given
        object.__setattr__(self, "explicit", explicit)         # a list was given (all must be installed)

    @classmethod
    def parse(cls, text: str) -> "AutoSpec":
        head, colon, rest = text.strip().lower().partition(":")
        if head != "auto":
            raise UsageError(f"not an auto codec spec: {text!r}")
        if not colon:
            return cls(tuple(CodecSpec.parse(c) for c in DEFAULT_LADDER))
        names = rest.replace(AUTO_SEP_ALIAS, AUTO_SEP).split(AUTO_SEP)
        if not rest or any(not c.strip() for c in names):
            raise UsageError(f"{text!r}: auto: needs a list of codecs joined by {AUTO_SEP!r}, "
                             f"e.g. auto:lz4{AUTO_SEP}zstd:3")
        ladder = tuple(dict.fromkeys(CodecSpec.parse(c) for c in names))
        return cls(ladder, True)

    @property
    def name(self) -> str:
        return "auto"

    @property
    def level(self):
        return None

    def resolve(self) -> "AutoSpec":
        """The default ladder less the codecs whose library is missing (looked for, not imported:
        ``CodecSpec.findable``); an explicit one as it is, every codec made (a missing one raises)."""
        if self.explicit:
            self.make_all()
            return self
        return AutoSpec(tuple(s for s in self.ladder if s.findable()), False)

    @property
    def start(self) -> int:
        """The ladder index used until measurements exist: lz4 when listed, else the first."""
        names = [s.name for s in self.ladder]
        return names.index("lz4") if "lz4" in names else 0

    @property
    def codec_id(self) -> int:
        """What the member header names: the start codec (the header names the codec asked for)."""
        return self.ladder[self.start].codec_id

    @property
    def stored_level(self) -> int:
        return self.ladder[self.start].stored_level

    def make(self) -> Codec:
        """The start codec's instance; the others are made where first used (dump/stages.py), or
        before the fork by ``make_all`` when the dump is long enough to use them."""
        return self.ladder[self.start].make()

    def __str__(self) -> str:
        return "auto" + (":" + AUTO_SEP.join(str(s) for s in self.ladder) if self.explicit else "")


def parse_codec(text: str) -> Spec:
    """A CodecSpec, or an AutoSpec for ``auto``/``auto:C+C+...``; raises UsageError."""
    if text.strip().lower().partition(":")[0] == "auto":
        return AutoSpec.parse(text)
    return CodecSpec.parse(text)
