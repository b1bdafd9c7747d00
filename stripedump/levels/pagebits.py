"""The dump levels' bits and the page class codes: the vocabulary pageclass and pagevec share.

Why this module: pageclass.py (the rules, and the walk of small machines)
chooses pagevec.py (numpy columns, for large machines) at run time, and
pagevec judges pages into the same classes; the names they both need live
here, so neither module imports the other's (no import cycle).  So do the
words the dump's summary and ``info`` use for what a level left out.
"""

ZERO, CACHE, CACHE_PRIVATE, USER, FREE = 1, 2, 4, 8, 16       # makedumpfile's -d bits
# class codes in the per-page arrays (0 = kept), and their names in counts
CLASSES = ("kept", "zero", "cache", "cache_private", "user", "free", "hwpoison", "offline")
C_ZERO, C_CACHE, C_CACHE_PRIVATE, C_USER, C_FREE, C_HWPOISON, C_OFFLINE = range(1, 8)
ZERO_BLOCK = 4096                 # pages zero-tested per read (16 MiB with 4 KiB pages)


def left_out_text(lv: dict) -> str:
    """What a dump level left out, in the same words in the dump's summary and in ``info`` (``lv``:
    their dump_level, one definition, docs/dumplevels.md): ``excluded_pages``, the pages left out
    (absent from every join and mount; the members' footers count them), per class, and
    ``zero_pages``, which are kept (stored as zero blocks)."""
    per = ", ".join(f"{k} {n}" for k, n in lv["excluded"].items() if n)
    zero = lv.get("zero_pages", 0)
    return (f"{lv['excluded_pages']} page(s) left out" + (f" ({per})" if per else "")
            + (f", {zero} zero page(s) kept as zero blocks" if zero else ""))
