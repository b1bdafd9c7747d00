#!/bin/bash
# dracut module "stripedump" (package stripedump): a capture initramfs that saves /proc/vmcore
# with stripedump as /etc/default/stripedump says, then reboots.  Included only when asked for
# (dracut --add stripedump; kdump-utils: dracut_args --add stripedump).  Python, stripedump and
# its locked dependencies are packed by `stripedump kdump pack`.

check() {
    require_binaries /usr/bin/stripedump || return 1
    return 255
}

depends() {
    # /dev/disk/by-id names for the targets; the kernel modules of the disks come with the
    # hostonly set or --add-drivers
    echo udev-rules
    return 0
}

install() {
    /usr/bin/stripedump kdump pack "$initdir" --lock /usr/lib/stripedump/requirements.lock >/dev/null \
        || { derror "stripedump: stripedump kdump pack failed"; return 1; }
    inst_simple /etc/default/stripedump
    inst_multiple -o reboot sync ssh
    inst_hook pre-mount 50 "$moddir/stripedump-capture.sh"
}
