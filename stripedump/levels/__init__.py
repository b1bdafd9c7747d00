"""levels: page classification for dump levels (makedumpfile's -d bits).

The rules resolved once from VMCOREINFO (pageclass), two engines that apply
them (a Python walk in pageclass, numpy columns in pagevec), and the level
bits and class codes both share (pagebits).
"""
