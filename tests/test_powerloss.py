"""Power-loss model check (bounded): every crash state a recorded dump can leave, joined.

A real ``stripedump dump`` (two members, 64 KiB chunks, lz4, a sync every
128 KiB through STRIPEDUMP_SYNC_EVERY so each member has several barriers)
writes onto a FUSE file system that records every write and sync
(tests/helpers/recording_fs.py).  tests/helpers/crashstates.py replays the
log into crash states (every prefix; each prefix with its next write torn at
4 KiB; at each barrier, random subsets of the unsynced writes in random
order) on empty targets and on targets that hold an older dump of the same
geometry, and checks each as ``join --allow-incomplete`` sees it: no wrong
page, ever, and every chunk synced before the crash recovered.  A sample of
states goes through the real ``stripedump join`` command, compared byte for
byte.  bench/powerloss.py runs the same check on thousands of states.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys

import pytest

from conftest import need_fuse
from stripedump.tools import synth
from stripedump.format.structs import HEADER_BLOCK

import crashstates as cs

MIB = 1 << 20
LOADS = [synth.Load(0x100000, 3 * MIB), synth.Load(0x1000000, MIB)]


def older_content(pfn: int, page_size: int) -> bytes:
    """The same memory, a crash earlier: every non-zero page differs in its second word."""
    c = synth.page_content(pfn, page_size)
    return c if not c.strip(b"\0") else c[:8] + b"OLDDUMP!" + c[16:]


# the writes a recorded dump makes (and so the crash states), by how it writes: buffered, about 139
# writes; with O_DIRECT (the default where a target takes it: issue 25, item 2), its records gathered
# in 4 MiB stage flushes, about 24, so fewer states
MIN_STATES = {"buffered": 200, "direct": 100}


@pytest.fixture(scope="module", params=sorted(MIN_STATES))
def recorded(tmp_path_factory, request):
    need_fuse()
    work = str(tmp_path_factory.mktemp("powerloss"))
    sources = {"new": os.path.join(work, "new.vmcore"), "old": os.path.join(work, "old.vmcore")}
    synth.build(sources["new"], LOADS)
    synth.build(sources["old"], LOADS, content=older_content)
    try:
        rec = cs.record_dump(work, sources["new"], sources["old"], sync_every=128 << 10,
                             dump_args=("--codec", "lz4", "--chunk-size", "64K", "--workers", "2")
                             + (("--buffered",) if request.param == "buffered" else ("--direct-io",)))
        rec.mode = request.param
    except RuntimeError as e:
        if "cannot mount FUSE" in str(e):
            pytest.skip(str(e))
        raise
    state = os.path.join(work, "state")
    os.makedirs(state)
    yield rec, cs.Expected(rec, sources, state), sources, state
    shutil.rmtree(work, ignore_errors=True)


def test_the_recorded_dump_has_barriers_and_completes(recorded):
    rec, exp, sources, state = recorded
    syncs = {n: sum(1 for op in rec.ops if op.kind == "sync" and op.name == n) for n in rec.names}
    assert all(s >= 4 for s in syncs.values()), syncs        # STRIPEDUMP_SYNC_EVERY took effect
    assert exp.ids["old"] != exp.ids["new"]
    final = cs.join_model(cs.write_state(state, rec.names, rec.final))
    assert final.dump_id == exp.ids["new"] and not final.missing
    assert len(final.recovered) == exp.plan.n_chunks
    synced = exp.durable(cs.last_barriers(rec.ops, len(rec.ops)))
    assert synced == set(range(exp.plan.n_chunks))


def test_the_check_catches_a_wrong_page_and_a_lost_chunk(recorded):
    """The verdicts can fail: a planted wrong page and a dropped synced chunk are caught."""
    rec, exp, sources, state = recorded
    out = cs.join_model(cs.write_state(state, rec.names, rec.final))
    everything = set(range(exp.plan.n_chunks))
    assert cs.check(out, exp, everything).ok
    data = bytearray(out.recovered[7])
    data[5000] ^= 1
    out.recovered[7] = bytes(data)
    assert cs.check(out, exp, everything).kind == "wrong"
    del out.recovered[7]
    assert cs.check(out, exp, everything).kind == "lost"
    old = cs.join_model(cs.write_state(state, rec.names, rec.old))
    assert old.dump_id == exp.ids["old"] and cs.check(old, exp, set()).ok   # the older dump is itself


def head_torn(rec, images) -> bool:
    """A member whose first write (member header + manifest, two 4 KiB pieces) persisted only in part."""
    for n in rec.names:
        w = next(op for op in rec.ops if op.kind == "write" and op.name == n and op.offset == 0)
        img = images[n]
        if (not img[:HEADER_BLOCK].strip(b"\0")) != (not img[HEADER_BLOCK:len(w.data)].strip(b"\0")):
            return True
    return False


@pytest.fixture(scope="module")
def fresh(recorded):
    """Every crash state on empty targets, checked once: (results, failures as (label, verdict, torn))."""
    rec, exp, sources, state = recorded
    fails = []
    res = cs.run_states(rec, exp, {}, state, random.Random(9), per_barrier=3,
                        on_fail=lambda st, v: fails.append((st.label, v, head_torn(rec, st.images))))
    return dict(res, mode=rec.mode), fails


def test_power_loss_on_fresh_targets_never_outputs_a_wrong_page(fresh):
    res, fails = fresh
    assert res["states"] >= MIN_STATES[res["mode"]]
    assert res["wrong"] == 0, res["first"]


def test_power_loss_on_fresh_targets_recovers_what_was_synced(fresh):
    """Found by this check: a refusal when one member's unsynced header/manifest write is torn.

    Power lost while member 1's first fdatasync is in flight, member 0's
    chunks already synced: member 1's header persisted without its manifest
    (or the reverse), and ``join --allow-incomplete`` refuses the whole set
    ("manifest differs", "expected a SDMF record") instead of going on
    without that member.  Any other loss fails this test.
    """
    res, fails = fresh
    other = [(label, v) for label, v, torn in fails if v.kind != "lost" or not torn]
    assert not other, other
    if fails:
        pytest.xfail(f"{len(fails)}/{res['states']} states: join refuses the set when a member's "
                     f"unsynced header+manifest write is torn (e.g. {fails[0][0]}: {fails[0][1].detail})")


@pytest.fixture(scope="module")
def older(recorded):
    """Every crash state over an older dump, checked once: (results, failures as (label, verdict))."""
    rec, exp, sources, state = recorded
    fails = []
    res = cs.run_states(rec, exp, rec.old, state, random.Random(10), per_barrier=3,
                        on_fail=lambda st, v: fails.append((st.label, v)))
    return dict(res, mode=rec.mode), fails


def test_power_loss_over_an_older_dump_never_outputs_a_wrong_page(older):
    res, fails = older
    assert res["states"] >= MIN_STATES[res["mode"]]
    assert res["wrong"] == 0, res["first"]


KNOWN_REFUSALS = {"join refused: a member's manifest differs", "join refused: a member's manifest is unreadable",
                  "join refused: members of different dumps"}


def test_power_loss_over_an_older_dump_recovers_what_was_synced(older):
    """Known losses (found by this check): join refuses the set when one member's unsynced first write
    (header and manifest) did not fully persist: torn ("manifest differs"), or not at all while another
    member's was synced, so that member still shows the older dump's header ("different dumps").
    Any other loss fails this test."""
    res, fails = older
    lost = [(label, v) for label, v in fails if v.kind == "lost"]
    other = [(label, v) for label, v in lost if v.cause not in KNOWN_REFUSALS]
    assert not other, other
    if lost:
        pytest.xfail(f"{len(lost)}/{res['states']} states: join refuses the set when a member's unsynced "
                     f"header+manifest write did not fully persist (e.g. {lost[0][0]}: {lost[0][1].detail})")


def sample(states, n, rng):
    states = list(states)
    return [states[0], states[-1]] + rng.sample(states[1:-1], n)


def test_the_join_command_agrees_with_the_model(recorded, tmp_path):
    rec, exp, sources, state = recorded
    rng = random.Random(11)
    for st in sample(cs.crash_states(rec, {}, rng, per_barrier=1), 6, rng):
        paths = cs.write_state(state, rec.names, st.images)
        v = cs.real_join(paths, str(tmp_path / "vmcore"), exp, sources)
        assert v.ok, (st.label, v)


def test_the_join_command_over_an_older_dump(recorded, tmp_path):
    rec, exp, sources, state = recorded
    rng = random.Random(12)
    for st in sample(cs.crash_states(rec, rec.old, rng, per_barrier=1), 4, rng):
        paths = cs.write_state(state, rec.names, st.images)
        v = cs.real_join(paths, str(tmp_path / "vmcore"), exp, sources)
        assert v.ok, (st.label, v)


@pytest.mark.parametrize("value, expected", [("131072", 131072), ("", 256 << 20), ("12k", 256 << 20),
                                             ("0", 256 << 20), ("-5", 256 << 20)])
def test_sync_interval_from_the_environment(value, expected):
    """STRIPEDUMP_SYNC_EVERY (tests only) sets the fdatasync interval; anything but bytes is ignored."""
    env = dict(os.environ, STRIPEDUMP_SYNC_EVERY=value, PYTHONPATH=cs.ROOT)
    out = subprocess.run([sys.executable, "-c", "import stripedump.dump.writer as m; print(m.SYNC_EVERY)"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert int(out) == expected
