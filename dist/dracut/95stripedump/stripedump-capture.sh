#!/bin/sh
# dracut pre-mount hook of the stripedump module (sourced by dracut).  Only in a capture kernel:
# dump /proc/vmcore as /etc/default/stripedump says and reboot; if stripedump does not save it,
# the boot goes on, and a capture kernel booted by kdump-tools then saves it with makedumpfile
# (kdump-tools-dump.service; stripedump's drop-in there sees this run's record and steps aside).
# Its lines go to the console (the journal of a capture initramfs is lost with the reboot).
if [ -e /proc/vmcore ]; then
    /opt/stripedump/bin/stripedump kdump capture --initramfs >/dev/console 2>&1 \
        || echo "stripedump: the dump was not saved by stripedump; the boot goes on" >/dev/console
fi
