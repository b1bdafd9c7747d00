import os

import pytest

from stripedump.format import codecs

from stripedump.tools import synth
from stripedump.errors import UsageError

PAGES = [bytes(4096), synth.page_content(5), synth.page_content(8), os.urandom(4096)]


@pytest.mark.parametrize("name", codecs.NAMES)
@pytest.mark.parametrize("page", range(len(PAGES)))
def test_round_trip_every_codec(name, page):
    c = codecs.CodecSpec.parse(name).make()
    data = PAGES[page]
    comp = c.compress(memoryview(data))
    assert bytes(c.decompress(comp, len(data))) == data


@pytest.mark.parametrize("name", ["lz4", "snappy", "lzo", "zlib", "zstd"])
def test_compressible_page_shrinks_and_random_does_not(name):
    c = codecs.CodecSpec.parse(name).make()
    text = b"kernel page struct " * 300
    assert len(c.compress(text)) < len(text) // 4
    rnd = os.urandom(4096)
    assert len(c.compress(rnd)) >= len(rnd) - 16     # incompressible: stored raw by the caller


def test_kdump_compatible_formats():
    """The byte formats makedumpfile and crash decode (shared/docs/kdump-format.md §6)."""
    import zlib
    page = synth.page_content(5)
    assert zlib.decompress(codecs.CodecSpec.parse("zlib").make().compress(page)) == page
    zs = codecs.CodecSpec.parse("zstd").make().compress(page)
    assert bytes(zs[:4]) == b"\x28\xb5\x2f\xfd"            # a zstd frame
    import lzo
    assert lzo.decompress(bytes(codecs.CodecSpec.parse("lzo").make().compress(page)), False, 4096) == page
    import snappy
    assert snappy.uncompress(bytes(codecs.CodecSpec.parse("snappy").make().compress(page))) == page


def test_registry_ids_are_unique_and_stable():
    assert {c.name: c.ID for c in codecs.BY_ID.values()} == \
        {"none": 0, "zlib": 1, "lzo": 2, "snappy": 3, "lz4": 4, "zstd": 5}
    assert codecs.BY_NAME["lz4"].kdump_flag is None          # kdump has no LZ4 flag
    assert codecs.BY_NAME["zstd"].kdump_flag == 0x20


@pytest.mark.parametrize("text,name,level", [("zstd:3", "zstd", 3), ("ZLIB:9", "zlib", 9),
                                             ("lz4", "lz4", None), ("zstd:-5", "zstd", -5)])
def test_spec_parse(text, name, level):
    s = codecs.CodecSpec.parse(text)
    assert (s.name, s.level) == (name, level)
    assert s.make().level == (level if level is not None else codecs.BY_NAME[name].default_level)


@pytest.mark.parametrize("text,msg", [("gzip", "unknown codec"), ("lz4:3", "takes no level"),
                                      ("zlib:x", "integer"), ("zlib:10", "level must be"),
                                      ("zstd:99", "level must be")])
def test_spec_rejects(text, msg):
    with pytest.raises(UsageError, match=msg):
        codecs.CodecSpec.parse(text)


def test_zlib_rejects_trailing_garbage():
    c = codecs.CodecSpec.parse("zlib").make()
    with pytest.raises(ValueError):
        c.decompress(c.compress(b"a" * 4096) + b"junk", 4096)


def test_findable_looks_for_a_library_without_importing_it():
    """auto (the default codec) leaves missing libraries out of its ladder by looking for them:
    importing zstandard alone pulls in typing and platform, which a small dump would pay for."""
    from conftest import run_python
    code = ("import sys\nfrom stripedump.format.codecs import CodecSpec\n"
            "found = [CodecSpec(n).findable() for n in ('zstd', 'lz4', 'none')]\n"
            "print(found, 'zstandard' in sys.modules)\n"
            "sys.modules['zstandard'] = None\n"        # as an import that fails
            "print(CodecSpec('zstd').findable())\n")
    p = run_python(code, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:2] == ["[True, True, True] False", "False"]
