"""Issue 12, target 5: the per-page Python overhead of encoding and decoding one chunk, before and after.

Why a script and not only bench/test_micro.py: the machine these numbers come
from is shared (2 CPUs, other jobs running), so absolute times move by tens
of percent from minute to minute.  This script times the chunk-record code of
a base commit (``--base``, read with ``git show``: its
stripedump/format/records.py, which issue 22 split into format/encode.py and
format/decode.py) and the working tree's in the same process, interleaved,
over several rounds, and reports the ratio of the medians.  The base's module
is loaded into the working tree's package, so its imports must resolve
there: the default base is the last commit with format/records.py; issue 12's
bases (7b6b302, 644d9b9) predate the sub-packages and need a checkout of
their own time.

Per codec, on one 1 MiB chunk of memory-like data (synth: a kernel-like mix
of zero, text-like, pointer-like and random pages):
  encode    encode_chunk of the chunk into a slot
  pure      the codec library's compress of the same non-zero pages (no record code)
  overhead  (encode - pure) / pages: what the record code adds per page
  check     read_chunk of the record: header, checksum and block table, no decompression
  decode    decode_chunk of the record

    .venv/bin/python bench/perpage.py [--rounds 7] [--base COMMIT] [--codecs lz4,zstd]

With ``--vmcore PATH`` (a real kernel's vmcore, e.g. bench/compare.py's fixtures): every
chunk of that source instead, encoded by the base commit's records.py *and* vmcore.py (its
Source maps the windows) and by the working tree's, chunk by chunk in turn (the order flips
every chunk), in one process; CPU seconds per GiB of source, the ratio, and a check that both
wrote the same bytes.  ``--base`` defaults to VMCORE_BASE there (before issue 12's encode-path
slice).

    .venv/bin/python bench/perpage.py --vmcore /var/tmp/b12/s1024 --codecs lzo,none
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

importlib.import_module("numpy")   # loaded, as in a reader or a long join: read_chunk vectorizes at once

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from stripedump.tools import synth  # noqa: E402
from stripedump.format.codecs import NAMES, CodecSpec  # noqa: E402
from stripedump.format.plan import Plan  # noqa: E402
from stripedump.format import decode, encode, structs  # noqa: E402
from stripedump.source.vmcore import Source  # noqa: E402

# the working tree's record code, under the names the base's records.py has
new_records = SimpleNamespace(encode_chunk=encode.encode_chunk, read_chunk=decode.read_chunk,
                              decode_chunk=decode.decode_chunk, record_bound=structs.record_bound,
                              CHUNK_HEADER_SIZE=structs.CHUNK_HEADER_SIZE)

BASE = "af4f7fb"       # main before issue 22's split of format/records.py (issue 22, step 4)
VMCORE_BASE = BASE     # issue 12's (644d9b9, before the encode path's slice) predates the sub-packages
PAGE = 4096


def load_base(commit: str, module: str = "format/records"):
    """The base commit's stripedump/MODULE.py as module stripedump.PACKAGE._NAME_base (its relative
    imports resolve to the working tree's modules, whose interfaces it uses unchanged)."""
    text = subprocess.run(["git", "-C", os.path.dirname(HERE), "show", f"{commit}:stripedump/{module}.py"],
                          check=True, capture_output=True, text=True).stdout
    fd, path = tempfile.mkstemp(suffix=".py")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    package, _, name = module.rpartition("/")
    modname = "stripedump." + (package.replace("/", ".") + "." if package else "") + f"_{name}_base"
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod       # dataclasses look their module up there
    spec.loader.exec_module(mod)
    os.unlink(path)
    return mod


def timed(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=20, help="calls per timing")
    ap.add_argument("--base", default=BASE)
    ap.add_argument("--codecs", default=",".join(NAMES))
    ap.add_argument("--chunk", type=int, default=7, help="which 1 MiB chunk of the synthetic source")
    ap.add_argument("--vmcore", help="encode every chunk of this source instead (see above)")
    a = ap.parse_args(argv)
    if a.vmcore:
        return whole_source(a)
    old = load_base(a.base)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mixed.vmcore")
        synth.build(path, [synth.Load(0, 64 << 20)])
        with Source(path) as src:
            plan = Plan(src.pfn_ranges, [], PAGE, 256)
            chunk = plan.chunk(a.chunk)
            with src.phys_window(chunk.start, chunk.count) as w:
                data = bytes(w.view())
            pages = [data[i:i + PAGE] for i in range(0, len(data), PAGE)]
            nonzero = [p for p in pages if p.count(0) != PAGE]
            print(f"chunk {a.chunk}: {len(pages)} pages, {len(pages) - len(nonzero)} zero; "
                  f"base {a.base} vs working tree; {a.rounds} rounds x {a.reps} calls; ratios old/new "
                  f"(>1: faster now)")
            print(f"{'codec':8} {'enc old us':>10} {'enc new us':>10} {'enc x':>6} {'pure us':>8} "
                  f"{'ovh/pg old':>10} {'ovh/pg new':>10} {'ovh x':>6} {'chk old':>7} {'chk new':>7} {'chk x':>6} {'dec old us':>10} {'dec new us':>10} "
                  f"{'dec x':>6} {'size old':>9} {'size new':>9}")
            for name in a.codecs.split(","):
                codec = CodecSpec(name).make()
                out = bytearray(new_records.record_bound(chunk.raw_bytes(PAGE), PAGE))
                zero = bytes(PAGE)
                recs = {}
                for tag, mod in (("old", old), ("new", new_records)):
                    n = mod.encode_chunk(src, codec, chunk, PAGE, out, zero)[0]
                    recs[tag] = bytes(out[:n])
                    assert new_records.decode_chunk(recs[tag], "bench", PAGE, {})[1] == data
                    assert old.decode_chunk(recs[tag], "bench", PAGE, {})[1] == data
                views = [memoryview(p) for p in nonzero]
                comp = codec.compress
                if codec.wants_bytes:
                    views = nonzero
                t = {k: [] for k in ("eo", "en", "pure", "co", "cn", "do", "dn")}
                for r in range(a.rounds + 1):       # round 0 warms up (the allocator's thresholds too): not kept
                    if r == 1:
                        t = {k: [] for k in t}
                    t["eo"].append(timed(lambda: old.encode_chunk(src, codec, chunk, PAGE, out, zero), a.reps))
                    t["en"].append(timed(lambda: new_records.encode_chunk(src, codec, chunk, PAGE, out, zero),
                                         a.reps))
                    t["pure"].append(timed(lambda: [comp(v) for v in views] if name != "none" else None, a.reps))
                    t["co"].append(timed(lambda: old.read_chunk(recs["new"], "bench", PAGE), a.reps))
                    t["cn"].append(timed(lambda: new_records.read_chunk(recs["new"], "bench", PAGE), a.reps))
                    t["do"].append(timed(lambda: old.decode_chunk(recs["new"], "bench", PAGE, {}), a.reps))
                    t["dn"].append(timed(lambda: new_records.decode_chunk(recs["new"], "bench", PAGE, {}), a.reps))
                m = {k: statistics.median(v) * 1e6 for k, v in t.items()}
                # per-round ratios, then their median: robust to load that changes between rounds
                enc_x = statistics.median(o / n for o, n in zip(t["eo"], t["en"]))
                ovh_x = statistics.median((o - p) / (n - p) for o, n, p in zip(t["eo"], t["en"], t["pure"]))
                dec_x = statistics.median(o / n for o, n in zip(t["do"], t["dn"]))
                chk_x = statistics.median(o / n for o, n in zip(t["co"], t["cn"]))
                print(f"{name:8} {m['eo']:10.0f} {m['en']:10.0f} {enc_x:6.2f} {m['pure']:8.0f} "
                      f"{(m['eo'] - m['pure']) / len(pages):10.2f} {(m['en'] - m['pure']) / len(pages):10.2f} "
                      f"{ovh_x:6.2f} {m['co']:7.0f} {m['cn']:7.0f} {chk_x:6.2f} {m['do']:10.0f} {m['dn']:10.0f} {dec_x:6.2f} "
                      f"{len(recs['old']):9d} {len(recs['new']):9d}")
    return 0


def whole_source(a) -> int:
    """--vmcore: every chunk of a real source, base (records + vmcore) against the working tree."""
    base = a.base if a.base != BASE else VMCORE_BASE
    old, old_vmcore = load_base(base), load_base(base, "source/vmcore")
    size = os.path.getsize(a.vmcore)
    print(f"{a.vmcore}: {size / 2**30:.2f} GiB; base {base} vs working tree; CPU seconds per GiB "
          f"(time.process_time), chunk by chunk in turn")
    print(f"{'codec':8} {'chunks':>7} {'all zero':>8} {'old s/GiB':>10} {'new s/GiB':>10} {'x':>6}")
    for name in a.codecs.split(","):
        codec = CodecSpec(name).make()
        with old_vmcore.Source(a.vmcore) as so, Source(a.vmcore) as sn:
            plan = Plan(sn.pfn_ranges, [], PAGE, 256)
            out = bytearray(new_records.record_bound(plan.chunk_bytes, PAGE))
            zero = bytes(plan.chunk_bytes)       # what a worker passes (stages.ZERO_COMPARE_BYTES)
            t = {"old": 0.0, "new": 0.0}
            zeros = 0
            for cid in range(plan.n_chunks):
                chunk = plan.chunk(cid)
                recs = {}
                for tag in (("old", "new") if cid % 2 else ("new", "old")):
                    mod, src = (old, so) if tag == "old" else (new_records, sn)
                    t0 = time.process_time()
                    n = mod.encode_chunk(src, codec, chunk, PAGE, out, zero)[0]
                    t[tag] += time.process_time() - t0
                    recs[tag] = bytes(out[:n])
                assert recs["old"] == recs["new"], f"chunk {cid}: the records differ"
                zeros += len(recs["new"]) == new_records.CHUNK_HEADER_SIZE
        gib = size / 2**30
        print(f"{name:8} {plan.n_chunks:7d} {zeros:8d} {t['old'] / gib:10.3f} {t['new'] / gib:10.3f} "
              f"{t['old'] / t['new']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
