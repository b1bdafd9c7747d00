#!/bin/bash
# Issue 12's targets in one quiet sequence (docs/benchmarks.md, "Issue 12: the targets"):
#   sudo FILLED=/var/tmp/f1024 bash bench/issue12.sh [OUTDIR]   (from the repository root)
set -u
cd "$(dirname "$0")/.."
O=${1:-/tmp/issue12-bench}; mkdir -p $O
uptime > $O/load-start.txt
.venv/bin/python bench/compare.py --fill 1024 --repeat 5 --codecs lzo,none --json $O/compare-filled.json > $O/compare-filled.md 2> $O/compare-filled.err
.venv/bin/python bench/compare.py --fill 0 --guest-mem 1024 --repeat 5 --codecs lzo,none --json $O/compare-sparse.json > $O/compare-sparse.md 2> $O/compare-sparse.err
.venv/bin/python bench/fixedcost.py --runs 15 > $O/fixedcost.txt 2>&1
.venv/bin/stripedump bench --size 4G --data mixed --codecs lz4 --workers 1,2 --disks 2 --repeat 3 --json > $O/lz4-scaling.json 2> $O/lz4-scaling.err
.venv/bin/python bench/auto.py --vmcore "${FILLED:?set FILLED to the filled fixture in /proc/vmcore layout (bench/normalize_vmcore.py)}" --runs 3 --json $O/auto-real-filled.json > $O/auto-real-filled.md 2> $O/auto-real-filled.err
uptime > $O/load-end.txt
echo "results in $O"
