"""read: reading a dump back from its members.

One member (member), the set of members of one dump (dumpset), random access
to the dump's bytes (reader), the parallel read pool (pool), join to ELF
(join, output), info, the view of a filtered dump (filtered), and the base of
every read-only file a dump is served as (fileview).
"""
