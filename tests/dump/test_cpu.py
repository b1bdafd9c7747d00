"""dump --json's cpu_seconds: per role, from the kernel's counts of real processes (issue 25, item 1)."""

import json
import os
import resource
import subprocess
import sys

from conftest import ROOT
from stripedump.tools import synth


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _dump(src: str, members: list[str], *opts) -> tuple[dict, float]:
    """``stripedump dump --json`` in a process of its own: its cpu_seconds, and the CPU the kernel
    counted for that whole process tree (interpreter start-up included)."""
    before = _children_cpu()
    p = subprocess.run([sys.executable, "-m", "stripedump", "dump", "--json", "-q", "--force", *opts,
                        "--disks", ",".join(members), src], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=ROOT), stdin=subprocess.DEVNULL)
    spent = _children_cpu() - before
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["cpu_seconds"], spent


def test_cpu_seconds_per_role_add_up_to_what_the_kernel_counted(tmp_path):
    big = synth.build(str(tmp_path / "big"), [synth.Load(0, 256 << 20)]).path
    tiny = synth.build(str(tmp_path / "tiny"), [synth.Load(0, 1 << 20)]).path
    members = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    cpu, spent = _dump(big, members, "--codec", "lzo", "--workers", "2")
    assert set(cpu) == {"coordinator", "workers", "writers", "other", "each_worker", "each_writer", "total"}
    assert len(cpu["each_worker"]) == 2 and len(cpu["each_writer"]) == 2
    assert all(x > 0 for x in cpu["each_worker"] + cpu["each_writer"] + [cpu["coordinator"]])
    assert abs(sum(cpu["each_worker"]) - cpu["workers"]) < 0.001
    assert abs(sum(cpu["each_writer"]) - cpu["writers"]) < 0.001
    assert abs(cpu["coordinator"] + cpu["workers"] + cpu["writers"] + cpu["other"] - cpu["total"]) < 0.001
    assert cpu["workers"] > cpu["writers"]              # lzo over 256 MiB: the codec is the work
    # what the dump does not count is the interpreter's start and its imports: as much for a dump
    # of one chunk as for this one (the kernel's count of each process tree, measured from here)
    small, small_spent = _dump(tiny, [str(tmp_path / "t0"), str(tmp_path / "t1")], "--codec", "lzo")
    assert cpu["total"] <= spent + 0.01
    start_up = small_spent - small["total"]
    # (a busy machine moves a start-up by some 0.1 s; a role left out would be off by far more: the
    # workers alone are most of the total)
    assert abs((spent - cpu["total"]) - start_up) < 0.1 + 0.15 * spent, (cpu, spent, small, small_spent)
    assert cpu["workers"] > 0.1 + 0.15 * spent
