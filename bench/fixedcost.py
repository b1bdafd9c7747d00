"""Issue 12, target 2: the fixed cost of a run, against stripedump 0.1.0, measured in one run.

Why a script: the target is a ratio (a dump of a 4 MiB core takes at most
half the time 0.1.0 takes), and this machine's timings move by 15% from
run to run, so both versions are timed here, interleaved, and compared by
their medians.

Both versions are installed the same way, non-editable, each into a
virtual environment of its own (pip compiles their .pyc files, as a
packaged install would have them):
  base  the commit given by --base (default 5cf6fbc: stripedump 0.1.0, the
        last commit that wrote format version 1; tests/fixtures/v1/README.md),
        exported with ``git archive``;
  now   the working tree as it is (tracked and untracked, not ignored files).
The base environment is kept between runs (--venv-dir); the current one
is rebuilt each time.

Each round runs ``stripedump dump -q --disks m0.sd,m1.sd core`` once per
version, in alternating order, on a synthetic core made by
``python -m stripedump.tools.synth core --size 4M`` (5.1 MiB file), members
deleted before each run; the time is the wall time of the whole command
(interpreter start to exit).  Also timed: ``stripedump --version`` (the
interpreter and the first import).

    .venv/bin/python bench/fixedcost.py [--runs 9] [--base 5cf6fbc] [--size 4M]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = "5cf6fbc"


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def make_venv(path: str, project: str) -> str:
    if os.path.exists(path):
        shutil.rmtree(path)
    sh(sys.executable, "-m", "venv", path)
    sh(os.path.join(path, "bin", "pip"), "install", "-q", project)
    return os.path.join(path, "bin", "stripedump")


def base_venv(venv_dir: str, commit: str) -> str:
    path = os.path.join(venv_dir, f"sd-{commit}")
    exe, mark = os.path.join(path, "bin", "stripedump"), os.path.join(path, ".commit")
    if os.path.exists(mark) and open(mark).read() == commit:
        return exe
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(f"git -C {ROOT} archive --format=tar {commit} | tar -x -C {tmp}", shell=True, check=True)
        make_venv(path, tmp)
    with open(mark, "w") as f:
        f.write(commit)
    return exe


def now_venv(venv_dir: str) -> str:
    files = sh("git", "-C", ROOT, "ls-files", "-co", "--exclude-standard", "-z").stdout.split("\0")
    with tempfile.TemporaryDirectory() as tmp:
        for f in filter(None, files):
            src = os.path.join(ROOT, f)
            if not os.path.isfile(src):
                continue        # deleted in the working tree
            os.makedirs(os.path.join(tmp, os.path.dirname(f)), exist_ok=True)
            shutil.copy2(src, os.path.join(tmp, f))
        return make_venv(os.path.join(venv_dir, "sd-now"), tmp)


def timed(cmd, cwd) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=9, help="rounds (medians of this many runs; at least 7)")
    ap.add_argument("--base", default=BASE)
    ap.add_argument("--size", default="4M")
    ap.add_argument("--venv-dir", default=tempfile.gettempdir())
    a = ap.parse_args(argv)
    exes = {"0.1.0": base_venv(a.venv_dir, a.base), "now": now_venv(a.venv_dir)}
    env_py = os.path.join(os.path.dirname(exes["now"]), "python")
    with tempfile.TemporaryDirectory() as tmp:
        sh(env_py, "-m", "stripedump.tools.synth", "core", "--size", a.size, cwd=tmp)
        for exe in exes.values():                       # warm the page cache and the .pyc files
            timed([exe, "dump", "-q", "--force", "--disks", "m0.sd,m1.sd", "core"], tmp)
        dump, start = {k: [] for k in exes}, {k: [] for k in exes}
        for r in range(a.runs):
            order = list(exes) if r % 2 == 0 else list(exes)[::-1]
            for k in order:
                for m in ("m0.sd", "m1.sd"):
                    if os.path.exists(os.path.join(tmp, m)):
                        os.unlink(os.path.join(tmp, m))
                dump[k].append(timed([exes[k], "dump", "-q", "--disks", "m0.sd,m1.sd", "core"], tmp))
                start[k].append(timed([exes[k], "--version"], tmp))
    print(f"{a.runs} interleaved rounds, a {a.size} synthetic core dumped over 2 member files in "
          f"{tempfile.gettempdir()}; base {a.base}")
    for what, t in (("dump", dump), ("--version", start)):
        m = {k: statistics.median(v) for k, v in t.items()}
        per_round = statistics.median(o / n for o, n in zip(t["0.1.0"], t["now"]))
        print(f"{what:10} 0.1.0 median {m['0.1.0'] * 1e3:6.1f} ms  now median {m['now'] * 1e3:6.1f} ms  "
              f"now/0.1.0 {m['now'] / m['0.1.0']:.2f}  (median of per-round ratios {1 / per_round:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
