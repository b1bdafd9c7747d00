"""The dump levels' bits and the page class codes: the vocabulary pageclass and pagevec share.

Why this module: pageclass.py (the rules, and the walk of small machines)
chooses pagevec.py (numpy columns, for large machines) at run time, and
pagevec judges pages into the same classes; the names they both need live
here, so neither module imports the other's (no import cycle).
"""

ZERO, CACHE, CACHE_PRIVATE, USER, FREE = 1, 2, 4, 8, 16       # makedumpfile's -d bits
# class codes in the per-page arrays (0 = kept), and their names in counts
CLASSES = ("kept", "zero", "cache", "cache_private", "user", "free", "hwpoison", "offline")
C_ZERO, C_CACHE, C_CACHE_PRIVATE, C_USER, C_FREE, C_HWPOISON, C_OFFLINE = range(1, 8)
ZERO_BLOCK = 4096                 # pages zero-tested per read (16 MiB with 4 KiB pages)
