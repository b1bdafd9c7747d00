#!/usr/bin/env bash
# Re-run every benchmark behind docs/benchmarks.md and print its targets table.
#
#   bash bench/run-all.sh            # about 10 minutes on 2 cores; results in docs/bench/
#
# Run it on an otherwise idle machine: the figures are ratios of runs made in
# the same session, but a busy machine still widens their spread.
set -euo pipefail
cd "$(dirname "$0")/.."
SD=${SD:-.venv/bin/stripedump}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/bench}
mkdir -p "$OUT"

echo "1/6 talk-style matrix on random data (codec x workers x disks, with no-write runs)" >&2
$SD bench --size 2G --data random --codecs lz4,snappy,lzo,zlib,zstd,none --workers 1,2 --disks 1,2 \
    --no-write --json --plot "$OUT/random-2G.png" -q > "$OUT/random-2G.json"

echo "2/6 CPU scaling, 1 vs 2 workers (medians of 3 runs)" >&2
$SD bench --size 1G --data random --codecs zlib,lz4 --workers 1,2 --disks 2 --no-write --repeat 3 \
    --json -q > "$OUT/scaling.json"
$SD bench --size 1G --data mixed --codecs zlib,lz4 --workers 1,2 --disks 2 --no-write --repeat 3 \
    --json -q > "$OUT/scaling-mixed.json"

echo "3/6 memory-like data" >&2
$SD bench --size 2G --data mixed --codecs lz4,lzo,zlib,zstd --workers 1,2 --disks 2 \
    --json --plot "$OUT/mixed-2G.png" -q > "$OUT/mixed-2G.json"

echo "4/6 memory, 1 GiB vs 64 GiB source (aliased: 64 MiB on disk; writers discard), and speed of a 64 GiB sparse all-zero source" >&2
for size in 1G 64G; do
  $SD bench --size $size --data random --codecs lz4 --workers 2 --disks 2 --mode no-write --repeat 3 --json -q \
      > "$OUT/memory-$size.json"
done
$SD bench --size 64G --data zero --codecs lz4 --workers 2 --disks 2 --repeat 3 --json -q > "$OUT/zero-64G.json"

echo "5/6 real kernel: stripedump vs makedumpfile and cp (builds a QEMU vmcore once)" >&2
$PY bench/compare.py --fill 1024 --repeat 3 --json "$OUT/compare.json" > "$OUT/compare.md"

echo "6/6 micro-benchmarks of the hot paths" >&2
$PY -m pytest bench/test_micro.py -q --benchmark-columns=mean,ops > "$OUT/micro.txt"

$PY bench/targets.py "$OUT"
