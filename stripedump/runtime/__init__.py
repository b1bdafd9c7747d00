"""runtime: what every process of stripedump stands on.

Forked children and their signal policy (procs), the pipes and shared records
that pass between them (ipc), whole-buffer file I/O (fileio), plain frozen
value classes (plain), progress output (progress), machine facts (machine),
sizes (units) and bitmaps (bitmap).  Imports nothing of stripedump's but errors.
"""
