#!/usr/bin/env bash
# capture-kernel.sh: stripedump in a real kdump capture kernel (`make e2e`).
#
# Boots Debian's kernel (linux-image-amd64, downloaded with apt-get download,
# never installed) under QEMU with crashkernel=256M; the first kernel loads a
# capture kernel with Debian's kexec (`kexec -p ... irqpoll nr_cpus=1
# reset_devices`) and crashes itself (`echo c > /proc/sysrq-trigger`); the
# capture kernel runs stripedump on /proc/vmcore onto two virtio disks and
# copies /proc/vmcore raw onto a third, measuring wall time and memory, and
# powers off.  Then, on the host, `stripedump join` of the two disk images
# must equal the raw copy byte for byte, and `stripedump verify` must pass.
#
# Python and stripedump are not packed into the initramfs: QEMU shares the
# host's root filesystem read-only over virtio-9p, and the guest's /init
# (tests/e2e/guest-init.sh) mounts it and chroots into it to run the venv's
# stripedump (and, in the first kernel, kexec).  The initramfs holds only a
# static busybox, the virtio/9p modules and /init.
#
# Output: progress on stderr, one line "e2e: PASS ..." or "e2e: FAIL ..." at
# the end, exit status 0 only on PASS.  Kept after the run (small):
#   $E2E_DIR/last-run-MODE.log   this script's output (MODE: E2E_PYTHON)
#   $E2E_DIR/serial-MODE.log     both kernels' console
# Cached: $E2E_DIR/cache (kernel .deb, the extracted kernel and modules).
# The run directory (disk images, ~3 GB sparse; initramfs) is deleted unless
# E2E_KEEP=1.
#
# Environment (defaults in brackets):
#   E2E_DIR [/var/tmp/stripedump-e2e]  STRIPEDUMP [REPO/.venv/bin/stripedump]
#   E2E_CODEC [lzo]  E2E_MEM_MB [1024]  E2E_SMP [2]
#   E2E_CRASHKERNEL [256M with 9p, 384M with initramfs: the packed Python, 96 MiB
#     unpacked with numpy's OpenBLAS, must fit beside its compressed image]
#   E2E_CAPTURE_CPUS [1] (nr_cpus= of the capture kernel, at most E2E_SMP)
#   E2E_PYTHON [9p]: where the capture kernel gets Python and stripedump:
#     9p (the host root) or initramfs (packed by `stripedump kdump pack`, the
#     dependencies checked against dist/requirements.lock)
#   E2E_FILL_MB [256] (data written into the first kernel's memory)
#   E2E_DEV_SHM [1] (mount a tmpfs on /dev/shm in the capture kernel, as
#     dracut and systemd do; 0: leave /dev/shm absent)
#   E2E_BOOT_TIMEOUT [600] (s, start to "crashing")
#   E2E_CAPTURE_TIMEOUT [1800] (s, crash to "done"), E2E_KEEP [0]
#   STRIPEDUMP_REAL_VMCORE_DIR: tests/fixtures/make-real-vmcore.sh's cache,
#     whose kernel .deb is reused when it is the current one.
#
# Needs root: apt-get installs qemu-system-x86, busybox-static, cpio, time and
# kexec-tools when missing, and downloads (never installs) the kernel.  No KVM
# needed.
# shellcheck disable=SC2012  # `ls` on Debian .deb and kernel file names is safe
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd -P)
REPO=$(cd "$HERE/../.." && pwd -P)
E2E_DIR=${E2E_DIR:-/var/tmp/stripedump-e2e}
mkdir -p "$E2E_DIR"
E2E_DIR=$(cd "$E2E_DIR" && pwd -P)
CACHE=$E2E_DIR/cache
SD=${STRIPEDUMP:-$REPO/.venv/bin/stripedump}
CODEC=${E2E_CODEC:-lzo}
MEM=${E2E_MEM_MB:-1024}
SMP=${E2E_SMP:-2}
FILL=${E2E_FILL_MB:-256}
DEV_SHM=${E2E_DEV_SHM:-1}
CAPTURE_CPUS=${E2E_CAPTURE_CPUS:-1}
PYTHON_FROM=${E2E_PYTHON:-9p}
case $PYTHON_FROM in
    9p) CRASHKERNEL=${E2E_CRASHKERNEL:-256M} ;;
    initramfs) CRASHKERNEL=${E2E_CRASHKERNEL:-384M} ;;
    *) echo "e2e: FAIL: E2E_PYTHON must be 9p or initramfs (got '$PYTHON_FROM')" >&2; exit 1 ;;
esac
LOG=$E2E_DIR/last-run-$PYTHON_FROM.log
SERIAL=$E2E_DIR/serial-$PYTHON_FROM.log
BOOT_TIMEOUT=${E2E_BOOT_TIMEOUT:-600}
CAPTURE_TIMEOUT=${E2E_CAPTURE_TIMEOUT:-1800}
REAL_VMCORE_DIR=${STRIPEDUMP_REAL_VMCORE_DIR:-/var/tmp/stripedump-real-vmcore}
# What the guest's /init loads (dependencies are resolved from the modules).
WANT_MODULES="virtio_pci virtio_blk 9pnet_virtio 9p"
SERIAL_M0=sd-member0 SERIAL_M1=sd-member1 SERIAL_RAW=sd-rawcopy

exec > >(tee "$LOG") 2>&1
start=$(date +%s)
FAILED=
say() { echo "e2e: $*"; }
# fail MESSAGE: the one-line FAIL summary, then exit 1 (the EXIT trap cleans up)
fail() {
    FAILED=1
    echo "e2e: FAIL [Python from $PYTHON_FROM]: $* (after $(( $(date +%s) - start ))s; log $LOG, console $SERIAL)"
    exit 1
}
# Kill QEMU and remove the run directory (disk images, initramfs) on any exit.
run='' qemu_pid=''
cleanup() {
    local rc=$?
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        say "stopping QEMU ($qemu_pid)"
        kill "$qemu_pid" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$qemu_pid" 2>/dev/null || true
    fi
    if [ -n "$run" ] && [ "${E2E_KEEP:-0}" = 1 ]; then
        say "kept $run (E2E_KEEP=1)"
    elif [ -n "$run" ]; then
        rm -rf "$run"
    fi
    if [ "$rc" != 0 ] && [ -z "$FAILED" ]; then
        echo "e2e: FAIL: exited with status $rc (log $LOG, console $SERIAL)"
    fi
}
trap cleanup EXIT
trap 'fail "interrupted"' INT TERM

for v in MEM SMP FILL CAPTURE_CPUS BOOT_TIMEOUT CAPTURE_TIMEOUT; do
    case ${!v} in ''|*[!0-9]*) fail "$v must be a number (got '${!v}')" ;; esac
done
[ "$(id -u)" = 0 ] || fail "needs root (apt-get, and reading the host root over 9p as root)"
[ -x "$SD" ] || fail "no stripedump at $SD (run make setup, or set STRIPEDUMP)"

# --- 1. tools -----------------------------------------------------------------
apt_updated=0
apt_update() {
    if [ "$apt_updated" = 0 ]; then
        say "apt-get update"
        timeout 300 apt-get update -qq >/dev/null 2>&1 || fail "apt-get update failed"
        apt_updated=1
    fi
}
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
[ -x /usr/bin/time ] || need+=(time)       # GNU time -v in the capture kernel (via 9p)
if [ ${#need[@]} -gt 0 ]; then
    apt_update
    say "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "${need[@]}" \
        >/dev/null 2>&1 || fail "apt-get install ${need[*]} failed"
fi

# kexec-tools: installed from Debian (it needs the Xen libraries it links
# against), with "handle reboots" preseeded to no so that the package does
# not change how this host reboots.  The first kernel runs the host's kexec
# through the 9p share.
if ! command -v kexec >/dev/null && [ ! -x /sbin/kexec ]; then
    apt_update
    say "installing kexec-tools (kexec-tools/load_kexec preseeded false)"
    echo "kexec-tools kexec-tools/load_kexec boolean false" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends kexec-tools \
        >/dev/null 2>&1 || fail "apt-get install kexec-tools failed"
fi
KEXEC=$(command -v kexec || echo /sbin/kexec)
KEXEC=$(readlink -f "$KEXEC")
say "kexec-tools $(dpkg-query -W -f='${Version}' kexec-tools 2>/dev/null || echo '?'): $KEXEC"

# --- 2. kernel + modules: apt-get download, extract only what is needed ------
KDIR=$CACHE/kernel
# modname FILE: the module name of a .ko path ("-" and "_" are the same)
modname() { local b=${1##*/}; b=${b%%.ko*}; echo "${b//-/_}"; }
# ko_depends FILE: the modules FILE depends on (its .modinfo depends=)
ko_depends() { tr '\0' '\n' <"$1" | sed -n 's/^depends=//p' | tr ',' ' '; }
# unpack_modules DEB PATHS...: extract those .ko paths, decompress .ko.xz/.zst
unpack_modules() {
    local deb=$1; shift
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$KDIR" "$@" || fail "extracting modules from $deb failed"
    find "$KDIR/lib/modules" -name '*.ko.xz' -exec xz -d -f {} + 2>/dev/null || true
    find "$KDIR/lib/modules" -name '*.ko.zst' -exec zstd -q -d --rm -f {} + 2>/dev/null || true
}

if ! { [ -s "$KDIR/modules.load" ] && ls "$KDIR"/boot/vmlinuz-* >/dev/null 2>&1; }; then
    apt_update
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    [ -n "$pkg" ] || fail "cannot resolve linux-image-amd64 to a kernel image package"
    mkdir -p "$CACHE/debs"
    deb=$(ls -t "$CACHE/debs/${pkg}_"*.deb "$REAL_VMCORE_DIR/cache/debs/${pkg}_"*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$deb" ]; then
        say "downloading $pkg"
        (cd "$CACHE/debs" && timeout 900 apt-get download -qq "$pkg" >/dev/null 2>&1) \
            || fail "apt-get download $pkg failed"
        deb=$(ls -t "$CACHE/debs/${pkg}_"*.deb | head -n1)
    else
        say "reusing $deb"
    fi
    rm -rf "$KDIR" && mkdir -p "$KDIR"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$KDIR" --wildcards './boot/vmlinuz-*' './boot/config-*' \
        || fail "extracting the kernel from $deb failed"
    dpkg-deb -f "$deb" Version >"$KDIR/version"
    # name -> path of every module in the package
    declare -A kopath=()
    while read -r p; do kopath[$(modname "$p")]=$p; done < <(dpkg-deb -c "$deb" | awk '{ print $NF }' | grep -E '\.ko(\.xz|\.zst)?$')
    # Resolve dependencies breadth-first, extracting each round in one pass.
    declare -A seen=()
    todo=$WANT_MODULES
    while [ -n "$todo" ]; do
        paths=()
        for m in $todo; do
            [ -n "${seen[$m]:-}" ] && continue
            [ -n "${kopath[$m]:-}" ] || fail "module $m is not in $deb"
            seen[$m]=1
            paths+=("${kopath[$m]}")
        done
        [ ${#paths[@]} -gt 0 ] || break
        unpack_modules "$deb" "${paths[@]}"
        todo=
        for p in "${paths[@]}"; do
            f=$KDIR/${p#./}; f=${f%.xz}; f=${f%.zst}
            for d in $(ko_depends "$f"); do [ -n "${seen[$d]:-}" ] || todo="$todo $d"; done
        done
    done
    # Load order: dependencies first (depth-first post-order).
    declare -A placed=()
    order=()
    place() {
        local m=$1 f d
        [ -n "${placed[$m]:-}" ] && return 0
        placed[$m]=1
        f=$KDIR/${kopath[$m]#./}; f=${f%.xz}; f=${f%.zst}
        for d in $(ko_depends "$f"); do place "$d"; done
        order+=("$m $f")
    }
    for m in $WANT_MODULES; do place "$m"; done
    printf '%s\n' "${order[@]}" >"$KDIR/modules.load"
fi
vmlinuz=$(ls "$KDIR"/boot/vmlinuz-* | head -n1)
krel=${vmlinuz##*/vmlinuz-}
say "kernel $krel ($(cat "$KDIR/version" 2>/dev/null || echo '?')); modules: $(cut -d' ' -f1 "$KDIR/modules.load" | tr '\n' ' ')"

# --- 3. initramfs: static busybox + modules + /init + /e2e.conf ---------------
# Built for every run, in the run directory (the guest reads it over 9p for
# kexec -p): /init and the settings may change, and runs may overlap.
run=$(mktemp -d "$E2E_DIR/run.XXXXXX")
initrd=$run/initramfs.cpio.gz
stage=$run/stage
mkdir "$stage"
mkdir -p "$stage"/{bin,dev,proc,sys,tmp,lib/modules}
cp /bin/busybox "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"
mods=
while read -r m f; do
    cp "$f" "$stage/lib/modules/$m.ko"
    mods="$mods $m"
done <"$KDIR/modules.load"
install -m 755 "$HERE/guest-init.sh" "$stage/init"
guest_sd=$SD guest_wrapper=$HERE/stripedump-kdump
packed="nothing: Python and stripedump come from the host root over 9p"
if [ "$PYTHON_FROM" = initramfs ]; then
    # The interpreter, the trimmed standard library, stripedump and its
    # runtime dependencies, their libraries, and GNU time for the measurement.
    pack=$(timeout 300 "$SD" kdump pack "$stage" --lock "$REPO/dist/requirements.lock" --extra /usr/bin/time) \
        || fail "stripedump kdump pack failed"
    guest_sd=/opt/stripedump/bin/stripedump guest_wrapper=/usr/sbin/stripedump-kdump
    install -D -m 755 "$HERE/stripedump-kdump" "$stage$guest_wrapper"
    packed=$(echo "$pack" | python3 -c 'import json, sys; print(json.load(sys.stdin)["summary"])')
fi
capture_append="console=ttyS0 irqpoll nr_cpus=$CAPTURE_CPUS reset_devices nousb panic=-1 loglevel=4"
cat >"$stage/e2e.conf" <<EOF
E2E_MODULES="${mods# }"
E2E_9P_TAG=hostroot
E2E_9P_MSIZE=262144
E2E_KEXEC="$KEXEC"
E2E_VMLINUZ="$vmlinuz"
E2E_INITRD="$initrd"
E2E_CAPTURE_APPEND="$capture_append"
E2E_SD="$guest_sd"
E2E_WRAPPER="$guest_wrapper"
E2E_PYTHON=$PYTHON_FROM
E2E_PACKED="$packed"
E2E_CODEC="$CODEC"
E2E_FILL_MB=$FILL
E2E_DEV_SHM=$DEV_SHM
E2E_SERIAL_M0=$SERIAL_M0
E2E_SERIAL_M1=$SERIAL_M1
E2E_SERIAL_RAW=$SERIAL_RAW
EOF
(cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -6) >"$initrd"
rm -rf "$stage"
say "initramfs: $(( $(stat -c %s "$initrd") >> 10 )) KiB (busybox, ${mods# }, /init)"
say "packed into the initramfs: $packed"

# --- 4. run QEMU ---------------------------------------------------------------
truncate -s "${MEM}M" "$run/member0.img" "$run/member1.img"
truncate -s "$(( MEM + 256 ))M" "$run/raw.img"
: >"$SERIAL"
# -virtfs: the host root, read-only; multidevs=remap keeps inode numbers
# unique across the host's mounts.  The disks carry serial numbers so the
# guest finds them whatever their probe order.
say "booting $krel under QEMU (TCG, ${MEM} MiB, $SMP CPUs, crashkernel=$CRASHKERNEL, fill ${FILL} MiB)"
qemu-system-x86_64 \
    -machine q35 -accel tcg -m "$MEM" -smp "$SMP" \
    -display none -monitor none -serial "file:$SERIAL" \
    -no-reboot -nodefaults \
    -kernel "$vmlinuz" -initrd "$initrd" \
    -append "console=ttyS0 crashkernel=$CRASHKERNEL panic=-1 loglevel=4" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -drive "file=$run/member0.img,if=none,id=m0,format=raw" -device "virtio-blk-pci,drive=m0,serial=$SERIAL_M0" \
    -drive "file=$run/member1.img,if=none,id=m1,format=raw" -device "virtio-blk-pci,drive=m1,serial=$SERIAL_M1" \
    -drive "file=$run/raw.img,if=none,id=r0,format=raw" -device "virtio-blk-pci,drive=r0,serial=$SERIAL_RAW" \
    </dev/null >"$run/qemu.out" 2>&1 &
qemu_pid=$!
boot_start=$(date +%s)

# console_has PATTERN: a console line matches the (extended) regex
console_has() { tr -d '\r' <"$SERIAL" 2>/dev/null | grep -qaE "$1"; }
# wait_for PATTERN TIMEOUT WHAT: wait for a console line; fail on a guest FAIL
# line, on QEMU's exit, or on the timeout.  Prints progress lines meanwhile.
shown=0
wait_for() {
    local pat=$1 limit=$2 what=$3 t0 n
    t0=$(date +%s)
    while ! console_has "$pat"; do
        n=$(tr -d '\r' <"$SERIAL" 2>/dev/null | grep -ac '^E2E: ' || true)
        if [ "$n" -gt "$shown" ]; then
            tr -d '\r' <"$SERIAL" | grep -a '^E2E: ' | sed -n "$(( shown + 1 )),${n}p" | sed 's/^E2E: /  guest: /'
            shown=$n
        fi
        if console_has '^E2E: FAIL'; then
            fail "guest: $(tr -d '\r' <"$SERIAL" | grep -a -m1 '^E2E: FAIL' | sed 's/^E2E: FAIL: //')"
        fi
        if ! kill -0 "$qemu_pid" 2>/dev/null; then
            console_has "$pat" && break
            fail "QEMU exited before $what: $(tail -qn3 "$run/qemu.out" "$SERIAL" 2>/dev/null | tr -d '\r' | tr '\n' ' ')"
        fi
        [ $(( $(date +%s) - t0 )) -lt "$limit" ] || fail "no $what after ${limit}s"
        sleep 1
    done
    n=$(tr -d '\r' <"$SERIAL" | grep -ac '^E2E: ' || true)
    if [ "$n" -gt "$shown" ]; then
        tr -d '\r' <"$SERIAL" | grep -a '^E2E: ' | sed -n "$(( shown + 1 )),${n}p" | sed 's/^E2E: /  guest: /'
        shown=$n
    fi
}
wait_for '^E2E: \[[0-9.]+\] crashing' "$BOOT_TIMEOUT" "crash of the first kernel"
crash_at=$(date +%s)
say "first kernel crashed after $(( crash_at - boot_start ))s"
wait_for '^E2E: \[[0-9.]+\] capture kernel .* up' 300 "capture kernel"
say "capture kernel up $(( $(date +%s) - crash_at ))s after the crash"
wait_for '^E2E: \[[0-9.]+\] done' "$CAPTURE_TIMEOUT" "end of the capture kernel's work"
for _ in $(seq 120); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.5; done
kill -0 "$qemu_pid" 2>/dev/null && fail "QEMU still running 60s after the capture kernel powered off"
wait "$qemu_pid" || true
qemu_pid=
vm_seconds=$(( $(date +%s) - boot_start ))

# --- 5. results from the console, then the host-side checks -------------------
res() { tr -d '\r' <"$SERIAL" | sed -n "s/^E2E-RESULT $1=//p" | tail -n1; }
vmcore_bytes=$(res vmcore_bytes)
sd_rc=$(res stripedump_rc)
sd_s=$(res stripedump_seconds)
raw_s=$(res raw_copy_seconds)
pss=$(res peak_pss_kib)
rss1=$(res peak_rss_one_process_kib)
nproc_peak=$(res peak_processes)
memtotal=$(res capture_memtotal_kib)
avail0=$(res avail_before_kib)
minavail=$(res min_avail_kib)
maxrss=$(res time_maxrss_kib)
json=$(tr -d '\r' <"$SERIAL" | sed -n 's/^E2E-JSON //p' | tail -n1)
redump_rc=$(res redump_rc)
redump_s=$(res redump_seconds)
[ -n "$vmcore_bytes" ] || fail "the guest did not report the size of /proc/vmcore"
if [ "$sd_rc" != 0 ]; then
    fail "stripedump exited $sd_rc in the capture kernel: $(tr -d '\r' <"$SERIAL" | grep -a -m1 '^stripedump: ' || echo '?')"
fi
[ "$redump_rc" = 0 ] || fail "the second dump (over the first) exited ${redump_rc:-?}: $(tr -d '\r' <"$SERIAL" \
    | grep -a -e '^stripedump: ' -e '^stripedump-kdump: .*fail' | tail -n1)"
mib() { awk -v k="${1:-0}" 'BEGIN { printf "%.1f", k / 1024 }'; }
say "capture kernel: MemTotal $(mib "$memtotal") MiB, MemAvailable before $(mib "$avail0") MiB," \
    "minimum during the dump $(mib "$minavail") MiB"
say "stripedump: ${sd_s}s for $vmcore_bytes bytes; peak Pss of its $nproc_peak processes $(mib "$pss") MiB," \
    "largest Rss of one $(mib "$rss1") MiB${maxrss:+, GNU time max RSS $(mib "$maxrss") MiB}"
say "stripedump --json: $json"
say "second dump over the first (stripedump-kdump chose --force): ${redump_s}s; the host checks this one"
say "raw copy (dd): ${raw_s}s"

# The raw disk holds the vmcore followed by zeros: cut it to the vmcore's size.
[ "$(stat -c %s "$run/raw.img")" -ge "$vmcore_bytes" ] || fail "raw disk smaller than the vmcore"
truncate -s "$vmcore_bytes" "$run/raw.img"
say "stripedump info:"
timeout 120 "$SD" info "$run/member0.img" "$run/member1.img" 2>&1 | sed 's/^/  /' \
    || fail "stripedump info failed"
t0=$(date +%s)
timeout 600 "$SD" verify -q "$run/member1.img" "$run/member0.img" || fail "stripedump verify failed"
verify_s=$(( $(date +%s) - t0 ))
t0=$(date +%s)
timeout 600 "$SD" join -q "$run/member1.img" "$run/member0.img" -o "$run/vmcore.joined" \
    || fail "stripedump join failed"
join_s=$(( $(date +%s) - t0 ))
timeout 300 cmp "$run/raw.img" "$run/vmcore.joined" \
    || fail "the joined vmcore differs from the raw copy of /proc/vmcore"
say "verify ${verify_s}s, join ${join_s}s; joined vmcore == raw copy ($vmcore_bytes bytes)"
echo "e2e: PASS [Python from $PYTHON_FROM]: kernel $krel, /proc/vmcore $(( vmcore_bytes >> 20 )) MiB:" \
     "stripedump --codec $CODEC ${sd_s}s in the capture kernel (dd ${raw_s}s), peak Pss $(mib "$pss") MiB," \
     "MemAvailable $(mib "$avail0") of $(mib "$memtotal") MiB; join == raw copy, verify ok;" \
     "total $(( $(date +%s) - start ))s (VM ${vm_seconds}s)"
