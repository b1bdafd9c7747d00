"""Print issue 3's targets table from the JSON that bench/run-all.sh leaves.

    .venv/bin/python bench/targets.py docs/bench
"""

import json
import os
import sys


def load(path):
    with open(path) as f:
        return json.load(f)["results"]


def pick(rows, **kw):
    return [r for r in rows if all(r[k] == v for k, v in kw.items())]


def main(d: str) -> int:
    out = ["| target | measured | goal | met |", "|---|---|---|---|"]
    cmp_path = os.path.join(d, "compare.json")
    if os.path.exists(cmp_path):
        for t in json.load(open(cmp_path)).get("targets", []):
            if not t.get("baseline"):
                continue
            what = "time" if t["kind"] == "time" else "throughput"
            out.append(f"| real kernel, {t['codec']}: {what} vs {t['baseline']} (medians) "
                       f"| {t['stripedump_s']:.2f} s vs {t['baseline_s']:.2f} s = x{t['ratio']:.3f} "
                       f"| {t['goal']} | {'yes' if t['met'] else 'NO'} |")
    rnd = load(os.path.join(d, "random-2G.json"))
    for data in ("random", "mixed"):
        scaling = load(os.path.join(d, "scaling.json" if data == "random" else "scaling-mixed.json"))
        for codec, goal in (("zlib", 1.8), ("lz4", 1.5)):
            for mode in (False, True):
                one = pick(scaling, codec=codec, workers=1, disks=2, write=mode)
                two = pick(scaling, codec=codec, workers=2, disks=2, write=mode)
                if not (one and two):
                    continue
                x = two[0]["mb_per_s"] / one[0]["mb_per_s"]
                out.append(f"| {codec} scaling on {data} data, 2 vs 1 workers, 2 disks, "
                           f"{'write' if mode else 'no-write'}, medians of 3 "
                           f"| {one[0]['mb_per_s']:.0f} -> {two[0]['mb_per_s']:.0f} MB/s = x{x:.2f} "
                           f"| >= x{goal} | {'yes' if x >= goal else 'NO'} |")
    mem = [r["peak_memory_bytes"] for r in pick(rnd, workers=2, disks=2, write=True)]
    out.append(f"| peak memory, 2 workers, 2 disks (all codecs) | max {max(mem) / 2**20:.1f} MiB "
               f"| < 96 MiB | {'yes' if max(mem) < 96 * 2**20 else 'NO'} |")
    small, large = (load(os.path.join(d, f"memory-{n}.json"))[0]["peak_memory_bytes"] for n in ("1G", "64G"))
    growth = large / small - 1
    out.append(f"| memory growth, 1 GiB -> 64 GiB source, 2 workers, 2 disks (max of 3 runs) "
               f"| {small / 2**20:.1f} -> {large / 2**20:.1f} MiB = {100 * growth:+.1f} % | <= +10 % "
               f"| {'yes' if growth <= 0.10 else 'NO'} |")
    zero = load(os.path.join(d, "zero-64G.json"))[0]
    out.append(f"| 64 GiB sparse all-zero source (median of 3) | {zero['mb_per_s']:.0f} MB/s | >= 2000 MB/s "
               f"| {'yes' if zero['mb_per_s'] >= 2000 else 'NO'} |")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/bench"))
