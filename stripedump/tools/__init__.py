"""tools: what measures and feeds stripedump, not part of a dump.

The throughput benchmark (bench) and synthetic vmcores (synth).
"""
