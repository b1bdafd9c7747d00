"""kdump: makedumpfile's formats.

The kdump-compressed layout (layout), join to kdump-compressed and flattened
files (join, flat), and the kdump file as a random-access view (view).
"""
