"""format: everything stripedump writes to a member.

The on-disk structs, each with its magic and version (structs); chunk records:
encoding source pages into one (encode, what the dump's workers run), checking
and expanding one (decode, what readers run) and its block table (blocktable);
the manifest (manifest), the plan of chunks and their placement (plan) and the
codec registry (codecs).
"""
