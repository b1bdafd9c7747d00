"""Issue 12, target 2: what a run no longer pays for, and that it still reads and writes the same.

- the ELF and program headers are parsed with struct: the same facts as
  pyelftools (an independent reader) on every synthetic layout, and one
  clean error for headers cut short;
- a dump imports neither pyelftools, psutil, numpy, uuid, python-lz4,
  multiprocessing (nor socket, subprocess, threading), pickle nor shutil
  (each was milliseconds of every run), nor dataclasses and typing, and
  generates no methods with exec; its children are forked without
  multiprocessing (procs.Child);
- the dump id is a version 4 UUID as uuid.uuid4() makes it;
- a small dump starts no more workers than it has chunks, and by default
  one per 16 chunks at most;
- main builds only the parser of the command it runs, the same parser.
"""

import json
import os
import struct
import subprocess
import sys
import uuid

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_E_MACHINE

from stripedump.tools import synth
from stripedump.errors import VmcoreFormatError
from stripedump.dump.coordinator import DumpId
from stripedump.source.vmcore import E_MACHINE, PT_LOAD, PT_NOTE, Source, machine_name

from conftest import run_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("layout", list(synth.layouts()))
def test_struct_parse_matches_pyelftools(vmcore, layout):
    b = vmcore(layout)
    with open(b.path, "rb") as f:
        elf = ELFFile(f)
        want = [(s["p_type"], s["p_offset"], s["p_vaddr"], s["p_paddr"], s["p_filesz"], s["p_memsz"],
                 s["p_flags"], s["p_align"]) for s in elf.iter_segments()
                if s["p_type"] in ("PT_LOAD", "PT_NOTE")]
        machine, elfclass, little = elf.header["e_machine"], elf.elfclass, elf.little_endian
    with Source(b.path) as src:
        info = src.info
        got = [({PT_LOAD: "PT_LOAD", PT_NOTE: "PT_NOTE"}[s.type], s.offset, s.vaddr, s.paddr, s.filesz, s.memsz,
                s.flags, s.align) for s in sorted(info.loads + info.note_segments, key=lambda s: s.index)]
    assert (info.machine, info.elfclass, info.endian) == (machine, elfclass, "<" if little else ">")
    assert got == [w for w in want if w[0] == "PT_NOTE" or w[5]]       # PT_LOADs with memory


def test_machine_names_are_pyelftools_names():
    for number, name in E_MACHINE.items():
        assert ENUM_E_MACHINE[name] == number
    assert machine_name(ENUM_E_MACHINE["EM_SPARCV9"]) == "EM_SPARCV9"     # from pyelftools' table
    assert machine_name(0xFEDC) == 0xFEDC                                 # unknown: the number, as pyelftools


@pytest.mark.parametrize("cut", [20, 63, 64 + 56 + 10])
def test_headers_cut_short_are_one_clean_error(vmcore, cut):
    b = vmcore("simple")
    os.truncate(b.path, cut)
    with pytest.raises(VmcoreFormatError):
        Source(b.path)


def test_pn_xnum_section_header_past_the_end_is_refused(vmcore):
    b = vmcore("pn_xnum")
    with open(b.path, "r+b") as f:
        f.seek(40)                                          # e_shoff
        f.write(struct.pack("<Q", os.path.getsize(b.path) + 4096))
    with pytest.raises(VmcoreFormatError, match="corrupt ELF header"):
        Source(b.path)


def test_dump_id_is_a_version_4_uuid():
    seen = set()
    for _ in range(200):
        d = DumpId.new()
        u = uuid.UUID(bytes=d.bytes)
        assert str(u) == str(d) and u.version == 4 and u.variant == uuid.RFC_4122
        seen.add(d.bytes)
    assert len(seen) == 200


def test_a_dump_imports_none_of_the_slow_modules(vmcore, tmp_path):
    b = vmcore("kernel")
    members = f"{tmp_path / 'm0'},{tmp_path / 'm1'}"
    code = ("import sys\nfrom stripedump.cli import main\n"
            f"rc = main(['dump', '-q', '--disks', {members!r}, {b.path!r}])\n"
            "heavy = ('elftools', 'psutil', 'numpy', 'uuid', 'multiprocessing', 'lz4', 'shutil', 'pickle',\n"
            "         'socket', 'subprocess', 'threading')\n"
            "print(rc, sorted(m for m in sys.modules if m.startswith(heavy)))\n")
    p = run_python(code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "0 []"


def test_a_small_join_and_verify_import_no_numpy(vmcore, tmp_path):
    """The index of a dump of few chunks is filled without numpy (reader.NUMPY_INDEX_MIN): its
    import would be most of a small join's start, paid before the workers begin."""
    b = vmcore("kernel")
    members = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    out = str(tmp_path / "out")
    code = ("import sys\nfrom stripedump.cli import main\n"
            f"rc = main(['dump', '-q', '--disks', {','.join(members)!r}, {b.path!r}])\n"
            f"rc += main(['join', '-q', '-o', {out!r}, *{members!r}])\n"
            f"rc += main(['verify', '-q', *{members!r}])\n"
            "print(rc, sorted(m for m in sys.modules if m.startswith('numpy')))\n")
    p = run_python(code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "0 []"
    assert open(out, "rb").read() == open(b.path, "rb").read()


def test_no_more_workers_than_chunks(tmp_path):
    src = str(tmp_path / "small.vmcore")
    synth.build(src, [synth.Load(0, 1 << 20)])              # two chunks: the page and the headers' residue
    members = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    p = subprocess.run([sys.executable, "-m", "stripedump", "dump", "--disks", ",".join(members), "--json",
                        "-vv", "--workers", "4", "--chunk-size", "1M", src], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    started = sum(1 for ln in p.stderr.splitlines() if ln.startswith("stripedump: started stripedump-worker-"))
    assert started == res["workers"] == res["chunks"] < 4
    for m in members:
        os.unlink(m)


def _dump_vv(tmp_path, src, *args):
    members = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    p = subprocess.run([sys.executable, "-m", "stripedump", "dump", "--disks", ",".join(members), "--json",
                        "-vv", *args, src], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    for m in members:
        os.unlink(m)
    started = sum(1 for ln in p.stderr.splitlines() if ln.startswith("stripedump: started stripedump-worker-"))
    return json.loads(p.stdout), started


def test_default_workers_are_one_per_16_chunks(tmp_path):
    """Without --workers, a dump starts one worker per CHUNKS_PER_WORKER chunks at most (and one
    per usable CPU): a 4 MiB dump runs one worker, not one per CPU."""
    from stripedump.runtime.machine import usable_cpus
    from stripedump.dump.coordinator import CHUNKS_PER_WORKER
    assert CHUNKS_PER_WORKER == 16
    src = str(tmp_path / "small.vmcore")
    synth.build(src, [synth.Load(0, 4 << 20)])               # 4 page chunks and the headers' residue
    res, started = _dump_vv(tmp_path, src)
    assert res["chunks"] == 5 and started == res["workers"] == 1
    synth.build(src, [synth.Load(0, 2 << 20)])               # 32 page chunks of 64K and the residue
    res, started = _dump_vv(tmp_path, src, "--chunk-size", "64K")
    assert res["chunks"] == 33 and started == res["workers"] == min(usable_cpus(), 3)
    res, started = _dump_vv(tmp_path, src, "--chunk-size", "1M", "--workers", "2")   # as given
    assert res["chunks"] == 3 and started == res["workers"] == 2
    os.unlink(src)


def test_a_dump_runs_without_dataclasses_typing_or_namedtuples(vmcore, tmp_path):
    """Importing dataclasses (inspect, ast, dis, tokenize) and typing, and generating the methods of
    dataclasses and NamedTuples with exec, was about a fifth of a small dump's time (issue 12):
    the dump path's value classes are plain.Plain / plain.Record, and nothing on it imports them."""
    b = vmcore("kernel")
    members = f"{tmp_path / 'm0'},{tmp_path / 'm1'}"
    code = ("import sys, builtins\n"
            "execs = []\n"
            "real_exec = builtins.exec\n"
            "def counting_exec(*a, **kw):\n"
            "    if isinstance(a[0], str):       # generated source, not a module's code object\n"
            "        execs.append(a[0].split('(')[0])\n"
            "    return real_exec(*a, **kw)\n"
            "builtins.exec = counting_exec\n"
            "from stripedump.cli import main\n"
            f"rc = main(['dump', '-q', '--disks', {members!r}, {b.path!r}])\n"
            "heavy = ('dataclasses', 'typing', 'inspect', 'ast', 'dis', 'tokenize')\n"
            "print(rc, sorted(m for m in sys.modules if m in heavy), execs)\n")
    p = run_python(code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "0 [] []"
    for m in ("m0", "m1"):
        os.unlink(tmp_path / m)


@pytest.mark.parametrize("cmd", ["dump", "join", "info", "verify", "mount", "umount", "bench"])
def test_a_command_gets_the_same_parser_built_alone(cmd, capsys):
    """main builds only the parser of the command argv names (issue 12): it must be the parser the
    whole command line has, option for option, and ``COMMAND --help`` must say the same."""
    import argparse
    from stripedump.cli import build_parser, main

    def subparsers(p):
        return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices
    full, alone = subparsers(build_parser())[cmd], subparsers(build_parser(cmd))
    assert list(alone) == [cmd]
    assert alone[cmd].format_help() == full.format_help()
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0 and capsys.readouterr().out == full.format_help()


_CHILDREN = """
import os, signal, sys, time
from stripedump.runtime import procs
def stubborn(ready):
    procs.child_init()
    os.write(1, b"ready\\n")
    os.write(ready, b"!")
    time.sleep(20)           # killed long before, unless join_all failed to

def raises():
    raise ZeroDivisionError("in the child")

def exits(code):
    sys.exit(code)

def reads_stdin():
    sys.exit(0 if sys.stdin.read() == "" else 3)

print("buffered in the parent", end="")     # flushed before the fork: printed once, not per child
r, w = os.pipe()
p = procs.spawn(stubborn, "stubborn", (w,))
os.close(w)
assert type(p) is procs.Child and p.is_alive() and p.exitcode is None
assert os.read(r, 1) == b"!"           # past child_init: it ignores the stop signals now
for s in procs.STOP_SIGNALS:
    os.kill(p.pid, s)                  # ignored: the kernel drops each one as it is sent
assert p.is_alive()
failures = []
procs.join_all([p], failures.append, "child", timeout=0.3)
assert not p.is_alive() and p.exitcode == -signal.SIGKILL and "was killed" in str(failures[0])
kids = [procs.spawn(raises, "raises", ()), procs.spawn(exits, "exits", (7,)), procs.spawn(exits, "none", (None,)),
        procs.spawn(reads_stdin, "stdin", ())]
failures = []
procs.join_all(kids, failures.append, "child")
print(";", [k.exitcode for k in kids], len(failures), sorted(m for m in sys.modules if m.startswith("multiprocessing")))
"""


def test_children_of_a_dump_are_forked_without_multiprocessing():
    """procs.spawn forks a procs.Child where multiprocessing is not loaded (a dump: importing it was
    about a tenth of a small dump's time, issue 12): stop signals ignored, a straggler killed by
    join_all, exit status as multiprocessing gives it (1 and a traceback after an exception, the
    SystemExit code), standard input from /dev/null, the parent's buffered output written once."""
    p = subprocess.run([sys.executable, "-c", _CHILDREN], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=ROOT), input="the caller's input")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "buffered in the parentready\n; [1, 7, 0, 0] 2 []\n"
    assert "Process raises:\nTraceback" in p.stderr and "ZeroDivisionError: in the child" in p.stderr


def test_plain_classes_behave_as_the_dataclasses_and_namedtuples_they_replace():
    import pickle
    from stripedump.format.codecs import CodecSpec
    from stripedump.dump.config import DumpConfig
    from stripedump.errors import UsageError
    from stripedump.format.structs import ChunkHeader, Footer, IndexEntry
    from stripedump.format.plan import Chunk
    c = Chunk(3, 1, 4096, 256)
    assert c == Chunk(3, 1, 4096, 256) != Chunk(4, 1, 4096, 256) and hash(c) == hash(Chunk(3, 1, 4096, 256))
    assert repr(c) == "Chunk(id=3, kind=1, start=4096, count=256)" and pickle.loads(pickle.dumps(c)) == c
    with pytest.raises(AttributeError):
        c.count = 1                                          # frozen
    cfg = DumpConfig("src", ("a", "b"), CodecSpec("zstd", 3), workers=2)
    assert cfg.codec == CodecSpec("zstd", 3) and DumpConfig("s", ("a",)).codec == CodecSpec("lz4")
    assert cfg._replace(workers=4).workers == 4 and cfg.workers == 2
    with pytest.raises(UsageError):
        cfg._replace(workers=-1)                             # checked again, as dataclasses.replace does
    with pytest.raises(TypeError):
        cfg._replace(wokers=4)
    e = IndexEntry(1, 2, 3, 4)
    chunk_id, offset, length, csum = e
    assert (chunk_id, offset, length, csum) == (e.chunk_id, e.offset, e.length, e.checksum) == (1, 2, 3, 4)
    assert e == (1, 2, 3, 4) and e._replace(offset=9) == IndexEntry(1, 9, 3, 4) and type(e._replace()) is IndexEntry
    assert IndexEntry._make([1, 2, 3, 4]) == e and e._asdict() == {"chunk_id": 1, "offset": 2, "length": 3,
                                                                    "checksum": 4}
    assert pickle.loads(pickle.dumps(e)) == e and type(pickle.loads(pickle.dumps(e))) is IndexEntry
    assert repr(e) == "IndexEntry(chunk_id=1, offset=2, length=3, checksum=4)"
    assert Footer(1, 2, 3, (), "") == (1, 2, 3, (), "", (), 0, 0, (), ()) and Footer._field_defaults["member_index"] == 0
    assert ChunkHeader._fields[-1] == "crc" and ChunkHeader(*range(12)).crc == 0
    with pytest.raises(ValueError):
        e._replace(nope=1)
    for bad in ((1, 2, 3), (1, 2, 3, 4, 5)):
        with pytest.raises(TypeError):
            IndexEntry(*bad)
    assert not hasattr(e, "__dict__") and not hasattr(c, "__dict__")


def test_the_console_script_freezes_the_objects_before_exit(vmcore, tmp_path):
    """``stripedump`` and ``python -m stripedump`` run ``cli.run``: main, then gc.freeze, so the
    interpreter's teardown does not collect garbage over every object (10-12 ms of a small dump,
    issue 12); atexit still runs and the exit code is main's.  A library caller of main is not frozen."""
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["scripts"]["stripedump"] == "stripedump.cli:run"
    b = vmcore("kernel")
    members = f"{tmp_path / 'm0'},{tmp_path / 'm1'}"
    code = ("import atexit, gc, sys\n"
            "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0, flush=True))\n"
            "from stripedump import cli\n"
            f"sys.argv = ['stripedump', 'dump', '-q', '--disks', {members!r}, {b.path!r}]\n"
            "rc = cli.run()\n"
            f"rc2 = cli.main(['info', *{members!r}.split(','), '--json'])\n"
            "sys.exit(rc + 40 + rc2)\n")
    p = run_python(code)
    assert p.returncode == 40, p.stderr
    assert p.stdout.splitlines()[-1] == "frozen at exit: True"
    code = ("import gc\nfrom stripedump.cli import main\n"
            f"main(['dump', '-q', '--force', '--disks', {members!r}, {b.path!r}])\n"
            "print(gc.get_freeze_count())\n")
    p = run_python(code)
    assert p.returncode == 0 and p.stdout == "0\n", p.stderr
    for m in members.split(","):
        os.unlink(m)
