"""mount: the dump served as read-only files through FUSE.

The mount's lifecycle: checks, fork, daemon, unmount (lifecycle); the file
system (fusefs).
"""
