"""read: reading a dump back from its members.

One member (member), the set of members of one dump (dumpset), random access
to the dump's bytes (reader), the parallel read pool (pool), join to ELF
(join, output), info, and the view of a filtered dump (filtered).
"""
