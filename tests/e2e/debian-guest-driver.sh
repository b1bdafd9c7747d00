#!/bin/sh
# /usr/local/sbin/e2e-driver in the Debian 12 image of tests/e2e/debian-vm.sh (`make e2e-debian`).
#
# Test scaffolding, not part of the package: e2e-driver.service runs it once a normal boot is up
# (never in a capture kernel: ConditionPathExists=!/proc/vmcore), and it runs the script the host
# handed to this boot through QEMU's fw_cfg (opt/e2e/script), its output on the serial console.
# Every line the host reads starts with "E2E".  Without a script (a boot the host did not plan)
# it does nothing.
modprobe qemu_fw_cfg 2>/dev/null
FW=/sys/firmware/qemu_fw_cfg/by_name/opt/e2e
n=0
while [ ! -r "$FW/script/raw" ] && [ "$n" -lt 10 ]; do sleep 1; n=$((n + 1)); done
[ -r "$FW/script/raw" ] || exit 0
cat "$FW/script/raw" >/run/e2e-script.sh
exec sh /run/e2e-script.sh >/dev/ttyS0 2>&1 </dev/null
