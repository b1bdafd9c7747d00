#!/bin/sh
# /init of the initramfs that tests/e2e/capture-kernel.sh builds (busybox sh).
#
# One initramfs serves both kernels:
#   first kernel (no /proc/vmcore): mount the host's root (9p, read-only),
#     fill some memory, load the capture kernel with the host's kexec
#     (`kexec -p`, run in a chroot of the host root), crash (sysrq c);
#   capture kernel (/proc/vmcore exists): run stripedump onto two virtio
#     disks, either from the host's venv (9p again, chroot) or, with
#     E2E_PYTHON=initramfs, from the interpreter packed into this initramfs
#     (stripedump kdump pack); copy /proc/vmcore raw onto a third disk,
#     report times and memory, power off.
#
# Settings come from /e2e.conf (written by capture-kernel.sh).  Every line the
# host script reads starts with "E2E"; "E2E: FAIL: ..." ends the run.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
# shellcheck disable=SC1091  # written by capture-kernel.sh
. /e2e.conf

say() { echo "E2E: [$(cut -d' ' -f1 /proc/uptime)] $*"; }
result() { echo "E2E-RESULT $*"; }
fail() {
    echo "E2E: FAIL: $*"
    sync
    poweroff -f
    sleep 30
    exit 1
}
uptime_s() { cut -d' ' -f1 /proc/uptime; }
# elapsed T0 T1: seconds between two uptime_s readings, 2 decimals
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
meminfo() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }   # KiB

for m in $E2E_MODULES; do
    insmod "/lib/modules/$m.ko" || fail "insmod $m"
done

# mount_host: the host's root filesystem, read-only, at /host, made usable as
# a chroot (fresh /proc, /sys, /dev, a small /tmp).
mount_host() {
    mkdir -p /host
    mount -t 9p -o "trans=virtio,version=9p2000.L,ro,cache=loose,msize=$E2E_9P_MSIZE" \
        "$E2E_9P_TAG" /host || fail "cannot mount the host root (9p tag $E2E_9P_TAG)"
    mount -t proc proc /host/proc || fail "mount /host/proc"
    mount -t sysfs sysfs /host/sys || fail "mount /host/sys"
    mount -t devtmpfs devtmpfs /host/dev || fail "mount /host/dev"
    mount -t tmpfs -o size=16m,mode=1777 tmpfs /host/tmp || fail "mount /host/tmp"
}
# mount_shm ROOT: a tmpfs on ROOT/dev/shm, as dracut's and systemd's
# initramfs mount it (E2E_DEV_SHM=0: leave it absent)
mount_shm() {
    [ "$E2E_DEV_SHM" = 1 ] || return 0
    mkdir -p "$1/dev/shm" || fail "mkdir $1/dev/shm"
    mount -t tmpfs -o size=16m,mode=1777 tmpfs "$1/dev/shm" || fail "mount $1/dev/shm"
}
# in_host CMD...: run CMD in the host root with a clean environment
in_host() {
    chroot /host /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/tmp TMPDIR=/tmp LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 "$@"
}
# in_initramfs CMD...: run CMD here (the packed Python) with a clean environment
in_initramfs() {
    env -i PATH=/usr/bin:/bin HOME=/tmp TMPDIR=/tmp LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 "$@"
}

# ---------------------------------------------------------------- first kernel
if [ ! -e /proc/vmcore ]; then
    mount_host
    crash_size=$(cat /sys/kernel/kexec_crash_size)
    say "first kernel $(uname -r) up after $(uptime_s)s, $(nproc) CPUs," \
        "MemTotal $(( $(meminfo MemTotal) / 1024 )) MiB, crashkernel $(( crash_size >> 20 )) MiB"
    [ "$crash_size" -gt 0 ] || fail "no crashkernel reservation (is crashkernel= on the command line?)"

    # Give the dump something to carry besides zero pages: a tmpfs with 1/4
    # random bytes, 3/8 binary (slices of busybox and the modules) and 3/8
    # text (/proc/kallsyms), in 8 MiB files (as make-real-vmcore.sh's fill;
    # each page is compressed on its own, so repeating a corpus is harmless).
    if [ "$E2E_FILL_MB" -gt 0 ]; then
        mkdir -p /fill
        mount -t tmpfs -o size=$(( E2E_FILL_MB + 48 ))m tmpfs /fill || fail "mount /fill"
        cat /proc/kallsyms >/fill/text.corpus
        cat /bin/busybox /lib/modules/*.ko >/fill/bin.corpus
        tmb=$(( $(wc -c </fill/text.corpus) >> 20 ))
        bmb=$(( $(wc -c </fill/bin.corpus) >> 20 ))
        have=0 i=0
        while [ "$have" -lt "$E2E_FILL_MB" ]; do
            n=8
            [ $(( E2E_FILL_MB - have )) -lt 8 ] && n=$(( E2E_FILL_MB - have ))
            case $(( i % 8 )) in
                0|4) dd if=/dev/urandom of=/fill/r.$i bs=1048576 count=$n ;;
                1|3|6) k=0; while [ "$k" -lt "$n" ]; do
                           dd if=/fill/bin.corpus bs=1048576 count=1 skip=$(( (i + k) % bmb ))
                           k=$(( k + 1 )); done >/fill/b.$i ;;
                *) k=0; while [ "$k" -lt "$n" ]; do
                       dd if=/fill/text.corpus bs=1048576 count=1 skip=$(( (i * 3 + k) % tmb ))
                       k=$(( k + 1 )); done >/fill/t.$i ;;
            esac 2>/dev/null || fail "fill: dd failed at $have MiB"
            have=$(( have + n )) i=$(( i + 1 ))
        done
        rm -f /fill/text.corpus /fill/bin.corpus
        say "filled $(du -sm /fill | cut -f1) MiB of tmpfs; MemFree $(( $(meminfo MemFree) / 1024 )) MiB"
    fi

    [ -x "/host$E2E_KEXEC" ] || fail "no kexec at $E2E_KEXEC (host path)"
    say "loading the capture kernel: kexec -p $E2E_VMLINUZ --initrd=$E2E_INITRD --append=\"$E2E_CAPTURE_APPEND\""
    t0=$(uptime_s)
    if ! in_host "$E2E_KEXEC" -p "$E2E_VMLINUZ" --initrd="$E2E_INITRD" --append="$E2E_CAPTURE_APPEND"; then
        say "kexec -p (kexec_load) failed; trying kexec_file_load (-s)"
        in_host "$E2E_KEXEC" -s -p "$E2E_VMLINUZ" --initrd="$E2E_INITRD" --append="$E2E_CAPTURE_APPEND" \
            || fail "kexec -p failed"
    fi
    [ "$(cat /sys/kernel/kexec_crash_loaded)" = 1 ] || fail "kexec -p returned but kexec_crash_loaded is not 1"
    say "capture kernel loaded in $(elapsed "$t0" "$(uptime_s)")s"
    say "crashing the first kernel (echo c > /proc/sysrq-trigger)"
    sync
    echo c >/proc/sysrq-trigger
    sleep 20
    fail "the first kernel is still running 20s after sysrq c"
fi

# -------------------------------------------------------------- capture kernel
say "capture kernel $(uname -r) up after $(uptime_s)s, $(nproc) CPUs," \
    "MemTotal $(( $(meminfo MemTotal) / 1024 )) MiB, MemAvailable $(( $(meminfo MemAvailable) / 1024 )) MiB"
say "cmdline: $(cat /proc/cmdline)"
# Where Python and stripedump come from: the host root over 9p (chroot), or
# the packed interpreter in this initramfs (no 9p mount at all).
if [ "$E2E_PYTHON" = initramfs ]; then
    R='' run=in_initramfs
    [ -x "$E2E_SD" ] || fail "no $E2E_SD in the initramfs"
    say "stripedump from the initramfs ($E2E_PACKED)"
else
    mount_host
    R=/host run=in_host
    say "stripedump from the host root over 9p"
fi
mkdir -p /tmp
mount_shm "$R"
result "capture_memtotal_kib=$(meminfo MemTotal)"

# The disks, by the serial numbers the host gave them (not by probe order).
disk_by_serial() {
    for s in /sys/block/vd*/serial; do
        [ "$(cat "$s" 2>/dev/null)" = "$1" ] && { d=${s%/serial}; echo "/dev/${d##*/}"; return 0; }
    done
    return 1
}
m0=$(disk_by_serial "$E2E_SERIAL_M0") || fail "no virtio disk with serial $E2E_SERIAL_M0"
m1=$(disk_by_serial "$E2E_SERIAL_M1") || fail "no virtio disk with serial $E2E_SERIAL_M1"
raw=$(disk_by_serial "$E2E_SERIAL_RAW") || fail "no virtio disk with serial $E2E_SERIAL_RAW"
say "members $m0 $m1, raw copy $raw"

vmcore_bytes=$(stat -L -c %s /proc/vmcore)
result "vmcore_bytes=$vmcore_bytes"
say "/proc/vmcore: $vmcore_bytes bytes"

# Memory sampler: every 0.5 s, the sum of Pss over stripedump's processes
# (smaps_rollup; shared pages counted once) and the largest Rss of one, and
# the system-wide MemAvailable; peaks/minimum go to /sampler.out on stop.
sampler() {
    peak_pss=0 peak_rss=0 peak_n=0 min_avail=$(meminfo MemAvailable) n=0
    while [ ! -e /sampler.stop ]; do
        pss=0 np=0
        for p in /proc/[0-9]*; do
            read -r c 2>/dev/null <"$p/comm" || continue
            case $c in
                stripedump|python*)
                    # shellcheck disable=SC2046  # two numbers, split on purpose
                    set -- $(awk '$1 == "Rss:" { r = $2 } $1 == "Pss:" { p = $2 } END { print p + 0, r + 0 }' \
                             "$p/smaps_rollup" 2>/dev/null)
                    pss=$(( pss + ${1:-0} )); np=$(( np + 1 ))
                    [ "${2:-0}" -gt "$peak_rss" ] && peak_rss=$2
                    ;;
            esac
        done
        avail=$(meminfo MemAvailable)
        [ "$pss" -gt "$peak_pss" ] && peak_pss=$pss
        [ "$np" -gt "$peak_n" ] && peak_n=$np
        [ "$avail" -lt "$min_avail" ] && min_avail=$avail
        n=$(( n + 1 ))
        sleep 0.5
    done
    echo "$peak_pss $peak_rss $peak_n $min_avail $n" >/sampler.out
}
stop_sampler() {
    touch /sampler.stop
    wait "$1"
    read -r PEAK_PSS PEAK_RSS PEAK_N MIN_AVAIL SAMPLES </sampler.out
    rm -f /sampler.stop /sampler.out
}

avail0=$(meminfo MemAvailable)
result "avail_before_kib=$avail0"
time_cmd=
[ -x "$R/usr/bin/time" ] && time_cmd="/usr/bin/time -v -o /tmp/time.txt"
sampler &
spid=$!
# stripedump runs through tests/e2e/stripedump-kdump, the wrapper the kdump
# recipes in docs/kdump.md use: standalone (JSON on stdout) with 9p, as a
# kdump.conf core_collector (SRC DEST, JSON into DEST) from the initramfs.
# wrapped [ARGS...]: the wrapper with the settings, in the chosen root
wrapped() {
    # shellcheck disable=SC2086  # $time_cmd is a command and its options
    $run STRIPEDUMP="$E2E_SD" STRIPEDUMP_DISKS="$m0,$m1" STRIPEDUMP_CODEC="$E2E_CODEC" \
        STRIPEDUMP_ARGS="$wrapper_args" $time_cmd "$E2E_WRAPPER" "$@"
}
if [ "$E2E_PYTHON" = initramfs ]; then
    wrapper_args='' out1=/tmp/dump.json out2=/tmp/dump2.json
    say "running: $E2E_WRAPPER /proc/vmcore $out1 (core_collector form; $E2E_SD --disks $m0,$m1 --codec $E2E_CODEC)"
else
    wrapper_args=--json out1='' out2=''
    say "running: $E2E_WRAPPER (standalone; $E2E_SD --disks $m0,$m1 --codec $E2E_CODEC --json /proc/vmcore)"
fi
t0=$(uptime_s)
if [ -n "$out1" ]; then wrapped /proc/vmcore "$out1"; else wrapped >"$R/tmp/dump.json"; fi
rc=$?
t1=$(uptime_s)
stop_sampler "$spid"
result "stripedump_rc=$rc"
result "stripedump_seconds=$(elapsed "$t0" "$t1")"
result "peak_pss_kib=$PEAK_PSS"
result "peak_rss_one_process_kib=$PEAK_RSS"
result "peak_processes=$PEAK_N"
result "min_avail_kib=$MIN_AVAIL"
result "samples=$SAMPLES"
if [ -s "$R/tmp/time.txt" ]; then
    result "time_maxrss_kib=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$R/tmp/time.txt")"
fi
echo "E2E-JSON $(tr -d '\n' <"$R/tmp/dump.json")"
say "stripedump exited $rc after $(elapsed "$t0" "$t1")s; peak Pss of its processes" \
    "$(( PEAK_PSS / 1024 )) MiB; MemAvailable $(( avail0 / 1024 )) -> min $(( MIN_AVAIL / 1024 )) MiB"

# Again, over the dump just taken: the wrapper must overwrite it (--force only
# because every target starts with a member header).  The host checks this one.
say "dumping again over the first dump"
time_cmd=
t0=$(uptime_s)
if [ -n "$out2" ]; then wrapped /proc/vmcore "$out2"; else wrapped >"$R/tmp/dump2.json"; fi
rc2=$?
t1=$(uptime_s)
result "redump_rc=$rc2"
result "redump_seconds=$(elapsed "$t0" "$t1")"
say "second dump exited $rc2 after $(elapsed "$t0" "$t1")s"

# The raw copy, for the byte-for-byte comparison on the host.
say "raw copy: dd if=/proc/vmcore of=$raw bs=1M"
t0=$(uptime_s)
dd if=/proc/vmcore of="$raw" bs=1048576 conv=fsync 2>/tmp/dd.err
dd_rc=$?
t1=$(uptime_s)
result "raw_copy_rc=$dd_rc"
result "raw_copy_seconds=$(elapsed "$t0" "$t1")"
[ "$dd_rc" = 0 ] || { cat /tmp/dd.err; fail "dd of /proc/vmcore to $raw failed"; }
say "raw copy done in $(elapsed "$t0" "$t1")s"

sync
say "done"
poweroff -f
sleep 30
