"""Wiring stripedump into the distribution's kdump service.

Why a package of its own: the dump, its formats and its readers do not care
how a capture kernel comes to run them; this package does, and nothing else
depends on it.  It holds what the Debian package (debian/, dist/) ships for
kdump-tools, the dracut module and kdump-utils' ``core_collector``:

* ``settings``: /etc/default/stripedump, read and checked once;
* ``capture``: the run in the capture kernel (kdump-tools' dump unit,
  the dracut hook, a ``core_collector``), which never leaves the crash
  unsaved: on any failure the distribution's own makedumpfile path runs;
* ``records``: what a capture run leaves for the next normal boot;
* ``wiring``: ``stripedump kdump show`` / ``test``, one line per problem;
* ``pack``: Python and stripedump packed into a capture initramfs.

Nothing here runs unless ``stripedump kdump ...`` is called, and an
unconfigured system (no targets in /etc/default/stripedump) is left exactly
as kdump-tools would leave it.
"""
