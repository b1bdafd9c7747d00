"""dump: making a dump.

The coordinator's loop (coordinator), the loops its worker and writer
processes run (stages), one member's writer (writer), the targets and their
lifecycle (targets), --codec auto's controller (autocodec), degraded striping
(degraded), hung targets (iowatch), the machine's limits applied (resources)
and the dump's frozen settings (config).
"""
