"""Resources fit the machine: --workers and --memory-limit are lowered to what fits, never refused.

Issue 9 case 11: ``--workers 1000`` on a 2-CPU machine started 1000
processes and 2 GB of buffer slots; in a capture kernel (128-512 MiB, often
one CPU) that is an OOM kill, not a dump.  Each test runs the real CLI in a
real process, confined the way a capture kernel confines it (one CPU by
affinity, ``ulimit -v``, a memory cgroup), and checks the warning, the number
of worker processes really started (``-vv`` names each), exit 0 and a join
identical to the source.
"""

from __future__ import annotations

import filecmp
import json
import os
import resource
import subprocess
import sys
import uuid

import pytest

from stripedump.tools import synth
from stripedump.read.config import JoinConfig
from stripedump.runtime.machine import usable_cpus
from stripedump.dump.resources import fit_workers
from stripedump.errors import UsageError
from stripedump.read.join import join
from stripedump.dump.resources import PROC_BYTES, fit_pool
from stripedump.runtime.machine import available_memory

from conftest import ROOT, assert_one_line_error, run_cli

MIB = 1 << 20


def _dump(tmp_path, src, *args, preexec=None):
    """The CLI in a process confined by ``preexec``; (rc, json summary or None, stderr, members)."""
    members = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "stripedump", "dump", "--disks", ",".join(members), "--json",
                        "-vv", *map(str, args), src], capture_output=True, text=True, env=env, timeout=300,
                       preexec_fn=preexec, stdin=subprocess.DEVNULL)
    res = json.loads(p.stdout) if p.returncode == 0 else None
    return p.returncode, res, p.stderr, members


def _started_workers(err: str) -> int:
    return sum(1 for ln in err.splitlines() if ln.startswith("stripedump: started stripedump-worker-"))


def _joins_to_source(tmp_path, members, src):
    out = tmp_path / "joined"
    join(JoinConfig(tuple(members), str(out)))
    assert filecmp.cmp(src, out, shallow=False)
    out.unlink()


def _one_cpu():
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def test_a_thousand_workers_on_one_cpu(tmp_path, vmcore):
    b = vmcore("kernel")
    rc, res, err, members = _dump(tmp_path, b.path, "--workers", 1000, "--chunk-size", "64K",
                                  preexec=_one_cpu)
    assert rc == 0, err
    assert ("stripedump: warning: --workers 1000 is more than 2 per usable CPU (1 CPU(s) here); "
            "using 2 workers") in err
    assert _started_workers(err) == 2 and res["workers"] == 2
    assert res["slots"] == 2 * 2 + 2 * 2
    assert res["lowered"] == ["--workers 1000 is more than 2 per usable CPU (1 CPU(s) here); using 2 workers"]
    _joins_to_source(tmp_path, members, b.path)


def test_warning_is_shown_even_with_quiet(tmp_path, vmcore):
    b = vmcore("kernel")
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "stripedump", "dump", "--disks", str(tmp_path / "m"), "-q",
                        "--workers", "1000", b.path], capture_output=True, text=True, env=env,
                       preexec_fn=_one_cpu, timeout=120)
    assert p.returncode == 0 and p.stdout == ""
    assert p.stderr.strip() == ("stripedump: warning: --workers 1000 is more than 2 per usable CPU "
                                "(1 CPU(s) here); using 2 workers")


def test_memory_limit_far_above_available_memory(tmp_path, vmcore):
    b = vmcore("kernel")
    rc, res, err, members = _dump(tmp_path, b.path, "--memory-limit", "1P", "--workers", 1)
    assert rc == 0, err
    assert "stripedump: warning: --memory-limit 1.0 PiB does not fit in half of the available memory (" in err
    assert res["pool_bytes"] <= available_memory()
    _joins_to_source(tmp_path, members, b.path)


def test_pool_that_cannot_hold_every_worker_lowers_the_workers(tmp_path, vmcore):
    """Before: "memory limit ... is too small", exit 2.  Now one worker fewer, and a warning."""
    b = vmcore("kernel")
    rc, res, err, members = _dump(tmp_path, b.path, "--workers", 2, "--memory-limit", "3500K",
                                  "--chunk-size", "1M")
    assert rc == 0, err
    assert ("stripedump: warning: the buffer pool of 2 worker(s) does not fit in the memory limit "
            "(3500 KiB: 3 slot(s) of 1028 KiB, one per worker and disk at least); using 1 worker(s)") in err
    assert _started_workers(err) == 1 and res["workers"] == 1 and res["pool_bytes"] <= 3500 << 10
    _joins_to_source(tmp_path, members, b.path)
    # refused only where nothing fits: one worker and two disks need three slots
    for m in members:
        os.unlink(m)
    res = run_cli("dump", "--disks", ",".join(members), "--memory-limit", "3M", b.path)
    assert_one_line_error(res, 2, "memory limit 3072 KiB is too small for one worker and 2 disk(s)",
                          "needs at least 3084 KiB")


def test_dump_under_an_address_space_limit(tmp_path):
    """ulimit -v 512M with 64 MiB chunks: the pool is mapped in every process and must fit there.

    Before, the coordinator mapped 12 slots of 64 MiB and died on ENOMEM.
    """
    src = str(tmp_path / "vmcore")
    synth.build(src, synth.demo_loads(160 * MIB))

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (512 * MIB, 512 * MIB))
    rc, res, err, members = _dump(tmp_path, src, "--workers", 4, "--chunk-size", "64M",
                                  "--memory-limit", "2G", "--codec", "lz4", preexec=limit)
    assert rc == 0, err
    assert ("stripedump: warning: --memory-limit 2.0 GiB does not fit in the address-space limit "
            "(ulimit -v: ") in err
    assert res["pool_bytes"] < 512 * MIB - 64 * MIB
    assert res["workers"] == _started_workers(err) >= 1
    _joins_to_source(tmp_path, members, src)
    for f in members + [src]:
        os.unlink(f)


@pytest.fixture
def memory_cgroup():
    """A memory cgroup (v2 or v1) limited to 256 MiB; yields a preexec function that enters it."""
    v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    base = "/sys/fs/cgroup" if v2 else "/sys/fs/cgroup/memory"
    path = os.path.join(base, f"stripedump-test-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(path)
        with open(os.path.join(path, "memory.max" if v2 else "memory.limit_in_bytes"), "w") as f:
            f.write(str(256 * MIB))
    except OSError as e:
        if os.path.isdir(path):
            os.rmdir(path)
        pytest.skip(f"cannot make a memory cgroup here: {e}")

    def enter():
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    yield enter
    os.rmdir(path)


def test_dump_in_a_memory_cgroup(tmp_path, vmcore, memory_cgroup):
    """MemAvailable is the host's inside a container: the cgroup's limit is what counts."""
    b = vmcore("kernel")
    rc, res, err, members = _dump(tmp_path, b.path, "--memory-limit", "1G", "--workers", 1,
                                  preexec=memory_cgroup)
    assert rc == 0, err
    assert "stripedump: warning: --memory-limit 1.0 GiB does not fit in half of the available memory (" in err
    assert res["pool_bytes"] <= 128 * MIB
    _joins_to_source(tmp_path, members, b.path)


@pytest.mark.parametrize("avail,as_room,want", [
    # a 128 MiB capture kernel with ~90 MiB available, 1 MiB chunks, 2 disks: the default quarter
    (90 * MIB, None, dict(workers=2, slots=8)),
    # 40 MiB available: a quarter is 10 MiB, 3 processes of PROC_BYTES fit in half
    (40 * MIB, None, dict(workers=1, slots=6)),
    # ulimit -v leaves 100 MiB: the pool stays under 100 - 64 (reserve) - 1 (window) MiB
    (1 << 40, 100 * MIB, dict(workers=2, slots=8)),
])
def test_fit_pool_in_small_machines(avail, as_room, want):
    fit = fit_pool(2, 2, MIB, 4096, 0, avail=avail, as_room=as_room)
    assert dict(workers=fit.workers, slots=fit.slots) == want
    assert fit.slots * fit.slot_size <= max(avail // 2, 3 * fit.slot_size)
    assert (2 + fit.workers + 1) * PROC_BYTES <= max(avail // 2, 4 * PROC_BYTES)


def test_fit_pool_refuses_only_when_nothing_fits():
    with pytest.raises(UsageError, match="too small for one worker and 2 disk"):
        fit_pool(4, 2, 64 * MIB, 4096, 0, avail=256 * MIB)      # 3 slots of 64 MiB > half of 256 MiB
    fit = fit_pool(4, 2, 16 * MIB, 4096, 0, avail=256 * MIB)
    assert fit.workers >= 1 and fit.slots * fit.slot_size <= 128 * MIB


def test_fit_workers():
    cpus = usable_cpus()
    assert fit_workers(0) == (cpus, None)
    assert fit_workers(2 * cpus) == (2 * cpus, None)
    n, warning = fit_workers(2 * cpus + 1)
    assert n == 2 * cpus and f"using {2 * cpus} workers" in warning
