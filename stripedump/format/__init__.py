"""format: everything stripedump writes to a member.

The on-disk structs, each with its magic and version (structs), chunk records
(records: encode and decode), the manifest (manifest), the plan of chunks and
their placement (plan) and the codec registry (codecs).
"""
