#!/usr/bin/env python3
"""Power-loss model check at scale: N crash states of a recorded dump, on fresh and on reused targets.

    .venv/bin/python bench/powerloss.py --states 5000 --seed 1     # root (FUSE), ~1 min per 2000 states

The larger sibling of tests/test_powerloss.py, with the same machinery
(tests/helpers/recording_fs.py records every write and sync of a real dump;
tests/helpers/crashstates.py builds crash states from the log and checks
them as ``join --allow-incomplete`` sees them).  Per run: a synthetic
vmcore of ``--size`` RAM is dumped over ``--members`` members with a sync
every ``--sync-every`` bytes (STRIPEDUMP_SYNC_EVERY); a slightly different
vmcore of the same geometry (every non-zero page differs in its second word)
was dumped onto the same targets first.  The log is replayed into at most
``--states`` crash states per base (every prefix, every prefix with its next
write torn at 4 KiB, then random unsynced subsets at each barrier until N),
once on empty targets and once over the older dump.  ``--joins K`` also runs
the real ``stripedump join`` on K states per base and compares its output
byte for byte with the source (zeros where it declares chunks missing).

Prints, per base, the states checked and how many output a wrong page or
lost a synced chunk, with the first example of each; ``--json`` for
scripts.  Exit status 0 only when no state failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "helpers"))

import crashstates as cs  # noqa: E402
from stripedump.tools import synth  # noqa: E402
from stripedump.runtime.units import parse_size  # noqa: E402


def older_content(pfn: int, page_size: int) -> bytes:
    c = synth.page_content(pfn, page_size)
    return c if not c.strip(b"\0") else c[:8] + b"OLDDUMP!" + c[16:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--states", type=int, default=2000, help="crash states per base (default 2000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--size", default="8M", help="RAM of the synthetic vmcore (default 8M)")
    ap.add_argument("--members", type=int, default=2)
    ap.add_argument("--chunk-size", default="64K")
    ap.add_argument("--codec", default="lz4")
    ap.add_argument("--sync-every", default="256K", help="STRIPEDUMP_SYNC_EVERY (default 256K)")
    ap.add_argument("--direct-io", action="store_true", help="record a dump taken with --direct-io")
    ap.add_argument("--joins", type=int, default=10, help="states per base also run through the join command")
    ap.add_argument("--dir", help="work directory (default: a temporary one, removed)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    work = a.dir or tempfile.mkdtemp(prefix="sd-powerloss-")
    os.makedirs(work, exist_ok=True)
    t0 = time.monotonic()
    try:
        size = parse_size(a.size)
        loads = [synth.Load(0x100000, size - size // 4), synth.Load(0x100000 + 2 * size, size // 4)]
        sources = {"new": os.path.join(work, "new.vmcore"), "old": os.path.join(work, "old.vmcore")}
        synth.build(sources["new"], loads)
        synth.build(sources["old"], loads, content=older_content)
        rec = cs.record_dump(work, sources["new"], sources["old"], a.members, parse_size(a.sync_every),
                             ("--codec", a.codec, "--chunk-size", a.chunk_size, "--workers", "2")
                             + (("--direct-io",) if a.direct_io else ()))
        state = os.path.join(work, "state")
        os.makedirs(state, exist_ok=True)
        exp = cs.Expected(rec, sources, state)
        nsync = sum(1 for op in rec.ops if op.kind == "sync")
        nwrite = sum(1 for op in rec.ops if op.kind == "write")
        report = {"seed": a.seed, "size": size, "chunks": exp.plan.n_chunks, "members": a.members,
                  "writes": nwrite, "syncs": nsync, "bases": {}}
        for name, base in (("fresh", {}), ("older dump", rec.old)):
            fixed = len(rec.ops) + 1 + sum(op.kind == "write" and len(op.data) > cs.PIECE for op in rec.ops)
            per_barrier = max(1, -(-(a.states - fixed) // max(nsync, 1)))
            res = cs.run_states(rec, exp, base, state, random.Random(rng.random()), per_barrier, a.states)
            joins = {"run": 0, "correct": 0, "first": None}
            if a.joins:
                states = list(cs.crash_states(rec, base, random.Random(rng.random()), 1))
                for st in rng.sample(states, min(a.joins, len(states))):
                    v = cs.real_join(cs.write_state(state, rec.names, st.images), os.path.join(work, "out"),
                                     exp, sources)
                    joins["run"] += 1
                    joins["correct"] += v.ok
                    if not v.ok and joins["first"] is None:
                        joins["first"] = f"{st.label}: {v.detail}"
            report["bases"][name] = {**res, "join_command": joins}
    finally:
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = round(time.monotonic() - t0, 1)
    failed = any(r["states"] != r["ok"] or r["join_command"]["run"] != r["join_command"]["correct"]
                 for r in report["bases"].values())
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"dump: {report['chunks']} chunks over {a.members} members, {nwrite} writes, {nsync} syncs "
              f"(seed {a.seed}, {report['seconds']} s)")
        for name, r in report["bases"].items():
            j = r["join_command"]
            print(f"{name}: {r['states']} crash states, {r['ok']} ok, {r['wrong']} with a wrong page, "
                  f"{r['lost']} lost synced chunks; the join command's output correct on "
                  f"{j['correct']}/{j['run']}")
            for cause, n in sorted(r["causes"].items()):
                print(f"  {n:5d} {cause}")
            for kind, ex in r["first"].items():
                print(f"  first {kind}: {ex}")
            if j["first"]:
                print(f"  first wrong join output: {j['first']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
