"""One protocol between processes (issue 22, step 3): every error a child raises reaches its parent whole.

Every StripedumpError subclass in stripedump (found by importing every
module and walking ``__subclasses__``, so a new one is covered without
touching this file) is raised in a real forked child and must reach the
parent as its own class, with its own exit code, message and wire
attributes (Interrupted's signal number, RemoteError's ``absent``):

- through the event records a dump's children send (runtime/ipc.py's
  ``Failed`` on an ``EventPipe``), all classes from one child;
- through the dump's real worker (the error raised where it encodes a
  chunk) and its real writer (where it appends one), seen by the
  coordinator as the error that ends the dump;
- through the join pool's real worker (the error raised by the handler),
  raised by ``run_pool``.

A class the parent does not know (defined in the child only) comes back as
its nearest parent that it knows, never as an internal error.
"""

import importlib
import pkgutil
import signal

import pytest

import stripedump
from stripedump.dump import loop, stages, writer
from stripedump.dump.config import DumpConfig
from stripedump.dump.coordinator import dump
from stripedump.errors import ExitCode, StripedumpError, VerifyError, from_wire
from stripedump.format.codecs import CodecSpec
from stripedump.read import pool
from stripedump.runtime import ipc, procs
from stripedump.tools.synth import MIB, Load

for _m in pkgutil.walk_packages(stripedump.__path__, "stripedump."):
    if not _m.name.endswith("__main__"):
        importlib.import_module(_m.name)


def _every_error_class():
    out, todo = [], [StripedumpError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(out, key=lambda c: f"{c.__module__}.{c.__qualname__}")


CLASSES = _every_error_class()
# the values a class's wire attributes get here: not their defaults, so that a lost one shows
SAMPLES = {"Interrupted": {"signum": signal.SIGHUP}, "RemoteError": {"absent": True}}


def _make(cls) -> StripedumpError:
    return cls(f"{cls.__name__} raised in a child", **SAMPLES.get(cls.__name__, {}))


def _same(got: StripedumpError, want: StripedumpError) -> None:
    assert type(got) is type(want), f"{type(want).__name__} came back as {type(got).__name__}: {got}"
    assert got.exit_code == want.exit_code and str(got) == str(want)
    for a in type(want).wire_attrs:
        assert getattr(got, a) == getattr(want, a), a


def test_the_walk_finds_the_classes_kept_outside_errors_py():
    names = {c.__name__ for c in CLASSES}
    assert {"Interrupted", "ChunkError", "MissingChunk", "NotDumped", "RemoteError", "CodecUnavailable"} <= names
    assert all(c.__name__ in SAMPLES for c in CLASSES if c.wire_attrs), "give its wire attributes a sample"
    assert _make(stripedump.errors.Interrupted).exit_code == ExitCode.SIGHUP


def _send_every_error(events) -> None:
    procs.child_init()
    for cls in CLASSES:
        try:
            raise _make(cls)
        except StripedumpError as e:
            events.put(ipc.Failed.of("test child", e, slot=7))

    class OnlyInTheChild(VerifyError):
        pass
    events.put(ipc.Failed.of("test child", OnlyInTheChild("a class the parent never saw")))
    events.put(ipc.Failed.of("test child", KeyError("a bug")))


def test_every_error_through_the_event_pipe_of_a_forked_child():
    events = ipc.EventPipe()
    p = procs.spawn(_send_every_error, "test-child", (events,))
    got = []
    try:
        while len(got) < len(CLASSES) + 2:
            evs = events.get_all(5.0)
            assert evs, "the child sent nothing"
            got.extend(evs)
    finally:
        procs.join_all([p], lambda e: None, "child")
        events.close()
    for ev, cls in zip(got, CLASSES):
        assert type(ev) is ipc.Failed and ev.who == "test child" and ev.slot == 7 and ev.chunk is None
        _same(ev.error, _make(cls))
    unknown, bug = got[-2].error, got[-1].error
    assert type(unknown) is VerifyError and unknown.exit_code == 7 and str(unknown) == "a class the parent never saw"
    assert type(bug) is StripedumpError and str(bug) == "internal error in test child: KeyError: 'a bug'"


def test_an_unknown_class_falls_back_to_its_nearest_known_parent():
    names = ("tests.Nowhere", "stripedump.errors.MissingChunk", "stripedump.errors.VerifyError",
             "stripedump.errors.StripedumpError")
    e = from_wire(names, "gone", {})
    assert type(e).__name__ == "MissingChunk" and e.exit_code == 7
    assert type(from_wire(("a.B", "c.D"), "x", {})) is StripedumpError     # never "internal error: ..."


def test_every_event_record_survives_the_wire():
    for ev in (ipc.Written(1, 4096, 0, 3, -1), ipc.Skipped(2), ipc.Unreadable(5, 2), ipc.Unclassified(6, "why"),
               ipc.Synced(1, 0), ipc.DiskFailed(0, "EIO"), ipc.Lost(1, 9), ipc.MemberDone(0, 8192, 3, 4096, {1: 2}, 5),
               ipc.ChunkRead(65536, [(1, 0, 4096, 8192)])):
        assert ipc.decode(ev.wire()) == ev and type(ipc.decode(ev.wire())) is type(ev)


# -- through the real children -----------------------------------------------------------

@pytest.fixture(scope="module")
def small_source(tmp_path_factory):
    from stripedump.tools import synth
    path = str(tmp_path_factory.mktemp("src") / "vmcore")
    synth.build(path, [Load(0, MIB)])
    return path


def _dump_error(small_source, tmp_path, monkeypatch) -> StripedumpError:
    """The error that ended a dump, as the coordinator holds it (before result() words it)."""
    seen = []
    real = loop.Coordinator.result

    def result(self):
        seen.append(self.error)
        return real(self)
    monkeypatch.setattr(loop.Coordinator, "result", result)
    with pytest.raises(StripedumpError):
        dump(DumpConfig(small_source, (str(tmp_path / "m0"),), CodecSpec("lz4"), 1, 64 << 10))
    return seen[0]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_from_a_dump_worker(small_source, tmp_path, monkeypatch, cls):
    def encode_chunk(*a, **k):
        raise _make(cls)
    monkeypatch.setattr(stages, "encode_chunk", encode_chunk)      # the workers are forked: they inherit it
    _same(_dump_error(small_source, tmp_path, monkeypatch), _make(cls))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_from_a_dump_writer(small_source, tmp_path, monkeypatch, cls):
    def append(self, *a, **k):
        raise _make(cls)
    monkeypatch.setattr(writer.MemberWriter, "append", append)
    _same(_dump_error(small_source, tmp_path, monkeypatch), _make(cls))


@pytest.fixture(scope="module")
def small_dump(small_source, tmp_path_factory):
    members = [str(tmp_path_factory.mktemp("dump") / f"m{i}") for i in range(2)]
    dump(DumpConfig(small_source, tuple(members), CodecSpec("lz4"), 1, 64 << 10))
    return members


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_from_a_join_pool_worker(small_dump, cls):
    def make_handler():
        def handle(rec, checked, where, task):
            raise _make(cls)
        return handle
    with stripedump.open(small_dump) as d:
        with pytest.raises(StripedumpError) as ei:
            pool.run_pool(d, 2, make_handler, False, None)
    _same(ei.value, _make(cls))
