#!/usr/bin/env bash
# debian-vm.sh: the Debian package in a real Debian 12 VM under kdump-tools (`make e2e-debian`).
#
# Builds a Debian 12 image with mmdebstrap (systemd, linux-image-amd64, kdump-tools,
# makedumpfile, dracut-core), boots it once so that kdump-tools builds its capture initrd, and
# caches that image.  Each run then installs the .deb of `make deb` into a copy with apt, as a
# user would, boots it under QEMU with two extra virtio disks (by-id names virtio-dumpA and
# virtio-dumpB through serial=) and runs three crashes, each configured through
# /etc/default/stripedump only:
#
#   kdump-tools  targets A and B; `stripedump kdump test` must pass; a marker into the kernel
#                log, sysrq c; kdump-tools' capture boot runs stripedump (the package's drop-in)
#                and reboots.  The next boot must report the dump (journal, kdump show).  On the
#                host: the members verify, join (ELF and kdump format), and crash with the
#                matching debug vmlinux (linux-image-amd64-dbg) shows the marker in `log` of both.
#   fallback     targets A and a disk that is not there: kdump test must name it; the capture
#                boot's stripedump gives up, kdump-tools saves its makedumpfile dump in
#                /var/crash, the next boot's journal says why; A and B are untouched; crash reads
#                the makedumpfile dump (makedumpfile -R first) and shows the marker.
#   dracut       the package's dracut module built into an initramfs with Debian's dracut
#                (`dracut --add stripedump`), loaded by kdump-tools as its capture initrd
#                (KDUMP_INITRD): the initramfs dumps onto A and B (over the first dump) and
#                reboots; the next boot reports the dump found on the targets; verify, join, crash.
#
# Output: progress on stderr, "e2e-debian: PASS ..." or "e2e-debian: FAIL ..." at the end (exit
# status 0 only on PASS), and the measured times and memory as "e2e-debian: measured ..." lines.
# Kept (small): $E2E_DIR/last-run.log, $E2E_DIR/serial-*.log (every boot's console).
# Cached in $E2E_CACHE (kept between runs; CI can keep it as a cache directory):
#   image-KEY/      the booted base image, its kernel and initrd (KEY: package list, mirror,
#                   IMAGE_VERSION below); rebuilt when the key changes or E2E_REBUILD=1
#   debs/, dbg/     linux-image-RELEASE-dbg (860 MB, downloaded once) and its vmlinux (630 MB)
#   accel           the KVM probe's verdict (kvm or tcg)
# The run directory (images: 4 GiB root, 2 x MEM dump disks, sparse) is removed unless E2E_KEEP=1.
#
# Environment (defaults in brackets): E2E_CACHE [/var/cache/stripedump-e2e],
#   E2E_DIR [/var/tmp/stripedump-e2e-debian], E2E_DEB [REPO/stripedump_*.deb],
#   STRIPEDUMP [REPO/.venv/bin/stripedump] (the host's, for verify and join),
#   E2E_MEM_MB [1024], E2E_CRASHKERNEL [384M], E2E_SMP [2], E2E_ACCEL [auto: kvm if the probe
#   boots Debian's kernel, else tcg], E2E_SCENARIOS ["kdump-tools fallback dracut"],
#   E2E_BOOT_TIMEOUT [1800] (s per QEMU run; dracut alone takes 7 min under TCG), E2E_REBUILD [0], E2E_KEEP [0].
# Needs root (mmdebstrap, loop mounts, chroot).  Installs mmdebstrap, qemu-system-x86, crash and
# makedumpfile on the host when missing.
# shellcheck disable=SC2012  # ls on file names this script made
set -eu   # no pipefail: grep -q ends pipelines early on purpose

HERE=$(cd "$(dirname "$0")" && pwd -P)
REPO=$(cd "$HERE/../.." && pwd -P)
CACHE=${E2E_CACHE:-/var/cache/stripedump-e2e}
E2E_DIR=${E2E_DIR:-/var/tmp/stripedump-e2e-debian}
SD=${STRIPEDUMP:-$REPO/.venv/bin/stripedump}
MEM=${E2E_MEM_MB:-1024}
CRASHKERNEL=${E2E_CRASHKERNEL:-384M}
SMP=${E2E_SMP:-2}
SCENARIOS=${E2E_SCENARIOS:-kdump-tools fallback dracut}
BOOT_TIMEOUT=${E2E_BOOT_TIMEOUT:-1800}
IMAGE_VERSION=1
# What the image holds besides the essential set: what a Debian 12 server with kdump-tools has,
# dracut-core (Debian's dracut; the "dracut" package would remove initramfs-tools, which
# kdump-tools' own capture initrd is built with), and the .deb's dependencies, so that installing
# it needs no download.
PACKAGES="systemd systemd-sysv udev kmod linux-image-amd64 initramfs-tools kexec-tools makedumpfile \
dracut-core busybox e2fsprogs procps util-linux file bsdextrautils python3 python3.11 liblzo2-2 zlib1g"
SERIAL_A=dumpA SERIAL_B=dumpB
TARGET_A=/dev/disk/by-id/virtio-$SERIAL_A TARGET_B=/dev/disk/by-id/virtio-$SERIAL_B
TARGET_MISSING=/dev/disk/by-id/virtio-dumpC

mkdir -p "$E2E_DIR" "$CACHE"
LOG=$E2E_DIR/last-run.log
exec > >(tee "$LOG") 2>&1
start=$(date +%s)
say() { echo "e2e-debian: $*"; }
measured() { echo "e2e-debian: measured $*"; }
FAILED=
fail() {
    FAILED=1
    echo "e2e-debian: FAIL: $* (after $(( $(date +%s) - start ))s; log $LOG, consoles $E2E_DIR/serial-*.log)"
    exit 1
}
run='' qemu_pid='' mnt=''
cleanup() {
    local rc=$?
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill "$qemu_pid" 2>/dev/null || true; sleep 2; kill -9 "$qemu_pid" 2>/dev/null || true
    fi
    [ -n "$mnt" ] && unmount_image
    if [ -n "$run" ] && [ "${E2E_KEEP:-0}" = 1 ]; then
        say "kept $run (E2E_KEEP=1)"
    elif [ -n "$run" ]; then
        rm -rf "$run"
    fi
    if [ "$rc" != 0 ] && [ -z "$FAILED" ]; then
        echo "e2e-debian: FAIL: exited with status $rc (log $LOG)"
    fi
}
trap cleanup EXIT
trap 'fail "interrupted"' INT TERM

[ "$(id -u)" = 0 ] || fail "needs root (mmdebstrap, loop mounts, chroot)"
for v in MEM SMP BOOT_TIMEOUT; do
    case ${!v} in ''|*[!0-9]*) fail "$v must be a number (got '${!v}')" ;; esac
done
DEB=${E2E_DEB:-$(ls -t "$REPO"/stripedump_*.deb 2>/dev/null | head -n1 || true)}
[ -n "$DEB" ] && [ -f "$DEB" ] || fail "no .deb (run make deb, or set E2E_DEB)"
[ -x "$SD" ] || fail "no stripedump at $SD for the host's checks (run make setup, or set STRIPEDUMP)"

# --- host tools ---------------------------------------------------------------------------
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v crash >/dev/null || need+=(crash)
command -v makedumpfile >/dev/null || need+=(makedumpfile)
command -v debugfs >/dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    timeout 300 apt-get update -qq >/dev/null 2>&1 || fail "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends "${need[@]}" \
        >/dev/null 2>&1 || fail "apt-get install ${need[*]} failed"
fi
# The image's apt sources are this host's Debian ones (bookworm, -updates, -security), as a
# Debian 12 machine has them: the image gets the kernel the host's apt sees, whose -dbg package
# the host downloads.  The mirrors here are a dated snapshot: no Valid-Until check.
SOURCES=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && grep -qE '^[^#]*(deb|URIs:).*/debian' "$f" && SOURCES+=("$f")
done
[ ${#SOURCES[@]} -gt 0 ] || fail "no Debian apt sources on this host (/etc/apt/sources.list*)"
MIRROR=$(cat "${SOURCES[@]}" | grep -oE 'https?://[^ ]*/debian' | sort -u | tr '\n' ' ')

# --- accelerator: KVM only if it really boots Debian's kernel (../shared/docs/debian-vm-notes.md) --
accel_probe() {
    local kernel=$1 out
    [ -e /dev/kvm ] || { echo tcg; return; }
    out=$(mktemp)
    timeout 60 qemu-system-x86_64 -accel kvm -cpu host -m 512 -display none -monitor none -nodefaults \
        -serial "file:$out" -no-reboot -kernel "$kernel" -append "console=ttyS0 panic=-1" </dev/null \
        >/dev/null 2>&1 &
    local pid=$! i
    for i in $(seq 1 45); do
        if grep -qa "Linux version" "$out" 2>/dev/null && grep -qa "Kernel command line" "$out"; then break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    if grep -qa "Kernel command line" "$out" 2>/dev/null; then echo kvm; else echo tcg; fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$out"
}

# --- the guest's scripts --------------------------------------------------------------------
# Prepended to every boot's script (sh in the guest).
GUEST_LIB='
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
FW=/sys/firmware/qemu_fw_cfg/by_name/opt/e2e
up() { cut -d" " -f1 /proc/uptime; }
say() { echo "E2E: [$(up)] $*"; }
out() { sed "s/^/E2E-OUT /"; }
result() { echo "E2E-RESULT $*"; }
fail() { echo "E2E: FAIL: $*"; sync; systemctl poweroff --force --force; sleep 60; }
# the package config, and nothing else: KEY=VALUE pairs into /etc/default/stripedump
configure() {
    for kv; do
        k=${kv%%=*}; v=${kv#*=}
        sed -i "/^#\{0,1\}$k=/d" /etc/default/stripedump
        echo "$k=\"$v\"" >>/etc/default/stripedump
    done
    grep "^STRIPEDUMP_" /etc/default/stripedump | out
}
wait_kdump_ready() {
    n=0
    until kdump-config status 2>/dev/null | grep -q "ready to kdump"; do
        n=$((n + 1)); [ "$n" -lt 600 ] || fail "kdump-config status: not ready after 600 s"
        sleep 1
    done
    say "kdump-config status: ready to kdump (after ${n} s of waiting)"
}
crash_now() {
    marker=$(cat "$FW/marker/raw") || fail "no marker in fw_cfg"
    echo "$marker" >/dev/kmsg
    say "marker in the kernel log: $marker"
    result "crash_at_uptime=$(up)"
    sync
    echo 1 >/proc/sys/kernel/sysrq
    say "crashing (echo c > /proc/sysrq-trigger)"
    sleep 1     # the serial line drains its buffer (a crash loses what is still in it)
    echo c >/proc/sysrq-trigger
    sleep 30
    fail "still running 30 s after sysrq c"
}
# after a crash: what the normal system says about it
after_crash() {
    say "boot after the crash: up"
    systemctl is-active stripedump-kdump-report.service >/dev/null 2>&1 || true
    journalctl -b -o cat -u stripedump-kdump-report.service | out
    say "stripedump kdump show:"
    stripedump kdump show 2>&1 | out
    ls -l /var/crash/ /var/crash/2* 2>/dev/null | out
    last=$(ls /var/lib/stripedump/kdump/capture-*.json 2>/dev/null | tail -n1)
    [ -n "$last" ] && python3 -c "import json, sys; r = json.load(open(sys.argv[1])); m = r.get(\"memory\", {}); \
print(\"E2E-RESULT record=\" + json.dumps({\"status\": r[\"status\"], \"exit_code\": r[\"exit_code\"], \
\"seconds\": r[\"seconds\"], \"dump_seconds\": r.get(\"dump\", {}).get(\"seconds\"), \"memory\": m, \
\"cpus\": r.get(\"cpus\"), \"where\": r[\"where\"], \"error\": r[\"error\"]}))" "$last"
    sync
    say "done"
    systemctl poweroff --no-block
}
'
write_script() {   # NAME BODY: the script of one boot
    printf '#!/bin/sh\n%s\n%s\n' "$GUEST_LIB" "$2" >"$run/script-$1.sh"
}

# --- base image (cached) --------------------------------------------------------------------
key=$(printf '%s\n' "$IMAGE_VERSION" "$PACKAGES" "$(cat "${SOURCES[@]}")" "$(sha256sum "$HERE/debian-guest-driver.sh")" \
      | sha256sum | cut -c1-12)
IMG=$CACHE/image-$key
if [ "${E2E_REBUILD:-0}" = 1 ] || [ ! -s "$IMG/booted.img" ]; then
    rm -rf "$IMG" && mkdir -p "$IMG"
    say "building the Debian 12 image with mmdebstrap (${SOURCES[*]}: $MIRROR)"
    t0=$(date +%s)
    rootdir=$IMG/root
    # kdump-tools after the kernel (its kernel hook cannot build the capture initrd in a chroot);
    # kexec-tools must not kexec on reboot (LOAD_KEXEC=false), so that a reboot ends QEMU
    timeout 1800 mmdebstrap --variant=apt --include="$(echo "$PACKAGES" | tr -s ' ' ',')" \
        --aptopt='Acquire::Check-Valid-Until "false"' \
        --customize-hook='chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends kdump-tools' \
        --customize-hook='sed -i "s/^LOAD_KEXEC=.*/LOAD_KEXEC=false/" "$1/etc/default/kexec"' \
        --customize-hook='echo "/dev/vda / ext4 defaults 0 1" >"$1/etc/fstab"; echo debian-e2e >"$1/etc/hostname"' \
        --customize-hook="install -m 755 '$HERE/debian-guest-driver.sh' \"\$1/usr/local/sbin/e2e-driver\"" \
        --customize-hook='printf "%s\n" "[Unit]" "Description=stripedump e2e driver (tests/e2e/debian-vm.sh)" \
            "ConditionPathExists=!/proc/vmcore" "After=multi-user.target stripedump-kdump-report.service kdump-tools.service" \
            "[Service]" "Type=oneshot" "ExecStart=/usr/local/sbin/e2e-driver" \
            "[Install]" "WantedBy=multi-user.target" >"$1/etc/systemd/system/e2e-driver.service"; \
            chroot "$1" systemctl enable e2e-driver.service' \
        --customize-hook='chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
            fstrim.timer man-db.timer' \
        bookworm "$rootdir" "${SOURCES[@]}" >"$IMG/mmdebstrap.log" 2>&1 \
        || { tail -n 20 "$IMG/mmdebstrap.log"; fail "mmdebstrap failed ($IMG/mmdebstrap.log)"; }
    cp "$rootdir"/boot/vmlinuz-* "$rootdir"/boot/initrd.img-* "$IMG/" || fail "no kernel or initrd in the image"
    truncate -s 4G "$IMG/base.img"
    mkfs.ext4 -q -F -L root -d "$rootdir" "$IMG/base.img" || fail "mkfs.ext4 -d failed"
    rm -rf "$rootdir"
    measured "image build: $(( $(date +%s) - t0 )) s (mmdebstrap and mkfs.ext4 -d)"
    echo "$(( $(date +%s) - t0 ))" >"$IMG/build-seconds"
fi
vmlinuz=$(ls "$IMG"/vmlinuz-* | head -n1)
initrd=$(ls "$IMG"/initrd.img-* | head -n1)
krel=${vmlinuz##*/vmlinuz-}
ACCEL=${E2E_ACCEL:-auto}
if [ "$ACCEL" = auto ]; then
    [ -s "$CACHE/accel" ] || accel_probe "$vmlinuz" >"$CACHE/accel"
    ACCEL=$(cat "$CACHE/accel")
fi
say "kernel $krel; accelerator $ACCEL; $MEM MiB, $SMP CPUs, crashkernel=$CRASHKERNEL"

run=$(mktemp -d "$E2E_DIR/run.XXXXXX")
CPU_ARGS=()
[ "$ACCEL" = kvm ] && CPU_ARGS=(-cpu host)

# qemu_boot NAME ROOT_IMAGE [MARKER]: one QEMU run (a boot, and its capture boot after a crash)
# with the script $run/script-NAME.sh; returns when QEMU exits (a reboot or poweroff ends it);
# sets T_CRASH (host time of the crash line, or empty) and T_END.
qemu_boot() {
    local name=$1 root=$2 marker=${3:-none} serial=$E2E_DIR/serial-$1.log t0 n shown=0
    : >"$serial"
    T_CRASH='' T_START=$(date +%s)
    qemu-system-x86_64 -accel "$ACCEL" "${CPU_ARGS[@]}" -m "$MEM" -smp "$SMP" \
        -display none -monitor none -serial "file:$serial" -no-reboot -nodefaults \
        -kernel "$vmlinuz" -initrd "$initrd" \
        -append "root=/dev/vda rw console=ttyS0 crashkernel=$CRASHKERNEL panic=10" \
        -drive "file=$root,format=raw,if=none,id=root" -device virtio-blk-pci,drive=root,addr=0x4 \
        -drive "file=$run/dumpA.img,format=raw,if=none,id=da" -device "virtio-blk-pci,drive=da,serial=$SERIAL_A,addr=0x5" \
        -drive "file=$run/dumpB.img,format=raw,if=none,id=db" -device "virtio-blk-pci,drive=db,serial=$SERIAL_B,addr=0x6" \
        -fw_cfg "name=opt/e2e/script,file=$run/script-$name.sh" -fw_cfg "name=opt/e2e/marker,string=$marker" \
        </dev/null >"$run/qemu-$name.out" 2>&1 &
    qemu_pid=$!
    t0=$(date +%s)
    while kill -0 "$qemu_pid" 2>/dev/null; do
        n=$(tr -d '\r' <"$serial" | grep -ac '^E2E: ' || true)
        if [ "$n" -gt "$shown" ]; then
            tr -d '\r' <"$serial" | grep -a '^E2E: ' | sed -n "$(( shown + 1 )),${n}p" | sed "s/^E2E: /  $name: /"
            shown=$n
        fi
        if [ -z "$T_CRASH" ] && tr -d '\r' <"$serial" | grep -qaE '^E2E: .*crashing|Kernel command line: .*elfcorehdr='; then
            T_CRASH=$(date +%s)
        fi
        if tr -d '\r' <"$serial" | grep -qa '^E2E: FAIL'; then
            fail "$name: guest: $(tr -d '\r' <"$serial" | grep -a -m1 '^E2E: FAIL' | sed 's/^E2E: FAIL: //')"
        fi
        [ $(( $(date +%s) - t0 )) -lt "$BOOT_TIMEOUT" ] || fail "$name: QEMU still running after ${BOOT_TIMEOUT}s"
        sleep 1
    done
    wait "$qemu_pid" || true
    qemu_pid=''
    T_END=$(date +%s)
    tr -d '\r' <"$serial" | grep -a '^E2E: ' | sed -n "$(( shown + 1 )),\$p" | sed "s/^E2E: /  $name: /"
    if [ -z "$T_CRASH" ] && tr -d '\r' <"$serial" | grep -qaE '^E2E: .*crashing|Kernel command line: .*elfcorehdr='; then
        T_CRASH=$T_END
    fi
}
console() { tr -d '\r' <"$E2E_DIR/serial-$1.log"; }
guest_out() { console "$1" | sed -n 's/^E2E-OUT //p'; }
guest_result() { console "$1" | sed -n "s/^E2E-RESULT $2=//p" | tail -n1; }

truncate -s "${MEM}M" "$run/dumpA.img" "$run/dumpB.img"

# --- first boot: kdump-tools builds its capture initrd (cached with the image) ---------------
if [ ! -s "$IMG/booted.img" ]; then
    write_script firstboot '
say "first boot: up; waiting for kdump-tools to build its capture initrd and load it"
wait_kdump_ready
ls -l /var/lib/kdump/ | out
say "done"
systemctl poweroff --no-block'
    cp --sparse=always "$IMG/base.img" "$run/first.img"
    say "first boot of the image (kdump-tools builds its capture initrd: minutes under TCG)"
    qemu_boot firstboot "$run/first.img"
    console firstboot | grep -q '^E2E: .*done' || fail "first boot did not finish (console $E2E_DIR/serial-firstboot.log)"
    measured "first boot (capture initrd built, kdump loaded, powered off): $(( T_END - T_START )) s"
    mv "$run/first.img" "$IMG/booted.img"
    rm -f "$IMG/base.img"
fi

# --- the package, installed with apt into a copy of the image ---------------------------------
mount_image() {   # IMAGE: loop-mounted at $run/mnt with /proc, /sys, /dev for a chroot
    mnt=$run/mnt
    mkdir -p "$mnt"
    mount -o loop "$1" "$mnt"
    for d in proc sys dev; do mount --bind "/$d" "$mnt/$d"; done
}
unmount_image() {
    local d
    for d in dev sys proc; do umount "$mnt/$d" 2>/dev/null || true; done
    umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    mnt=''
}
cp --sparse=always "$IMG/booted.img" "$run/root.img"
mount_image "$run/root.img"
cp "$DEB" "$mnt/tmp/"
t0=$(date +%s)
chroot "$mnt" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "/tmp/$(basename "$DEB")" \
    >"$run/apt.log" 2>&1 || { tail -n 20 "$run/apt.log"; fail "apt-get install $(basename "$DEB") failed"; }
measured "apt-get install $(basename "$DEB") in the image: $(( $(date +%s) - t0 )) s"
grep -E '^(Setting up|Unpacking) stripedump' "$run/apt.log" | sed 's/^/  /'
chroot "$mnt" stripedump --version | sed 's/^/  installed: /'
cc=$(chroot "$mnt" sh -c 'for c in cc c99 gcc clang tcc; do command -v "$c"; done' || true)
[ -z "$cc" ] || fail "a compiler is on the image's PATH after installing the package: $cc"
rm -f "$mnt/tmp/$(basename "$DEB")"
# test scaffolding: no login prompt on the serial line (agetty's vhangup would cut the driver's output)
chroot "$mnt" systemctl mask -q serial-getty@ttyS0.service
unmount_image

DBG_VMLINUX=$CACHE/dbg/usr/lib/debug/boot/vmlinux-$krel
debug_vmlinux() {   # linux-image-RELEASE-dbg, downloaded once; only its vmlinux kept
    [ -s "$DBG_VMLINUX" ] && return 0
    mkdir -p "$CACHE/debs" "$CACHE/dbg"
    local pkg=linux-image-$krel-dbg deb
    deb=$(ls "$CACHE/debs/${pkg}_"*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$deb" ]; then
        say "downloading $pkg (about 860 MB, once)"
        (cd "$CACHE/debs" && timeout 1800 apt-get download -q "$pkg" >/dev/null 2>&1) || fail "apt-get download $pkg failed"
        deb=$(ls "$CACHE/debs/${pkg}_"*.deb | head -n1)
    fi
    say "extracting vmlinux-$krel from $deb"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$CACHE/dbg" "./usr/lib/debug/boot/vmlinux-$krel" \
        || fail "extracting the debug vmlinux failed"
}
# crash_log VMCORE WHAT MARKER: crash opens VMCORE with the debug vmlinux and `log` shows MARKER
crash_log() {
    local out=$run/crash-$2.out
    printf 'log\nquit\n' | timeout 900 crash -s "$DBG_VMLINUX" "$1" >"$out" 2>&1 || true
    grep -q "$3" "$out" || { tail -n 15 "$out"; fail "crash on the $2 vmcore: the marker $3 is not in its log"; }
    say "crash $(crash --version 2>/dev/null | awk 'NF { print $2; exit }') opened the $2 vmcore; its log shows: $(grep -m1 "$3" "$out" | sed 's/^ *//')"
}
# check_members WHAT MARKER: verify, info, join (ELF and kdump), crash on both joins
check_members() {
    local what=$1 marker=$2
    timeout 600 "$SD" verify "$run/dumpA.img" "$run/dumpB.img" >"$run/verify-$what.out" 2>&1 \
        || { cat "$run/verify-$what.out"; fail "$what: stripedump verify of the two disks failed"; }
    "$SD" info "$run/dumpA.img" "$run/dumpB.img" | sed -n '1,3p' | sed "s/^/  $what: /"
    timeout 900 "$SD" join "$run/dumpA.img" "$run/dumpB.img" -o "$run/vmcore-$what" >/dev/null \
        || fail "$what: stripedump join failed"
    timeout 900 "$SD" join "$run/dumpA.img" "$run/dumpB.img" --format kdump -o "$run/vmcore-$what.kdump" \
        >/dev/null || fail "$what: stripedump join --format kdump failed"
    say "$what: verify ok; joined: ELF $(( $(stat -c %s "$run/vmcore-$what") >> 20 )) MiB, kdump $(( $(du -k "$run/vmcore-$what.kdump" | cut -f1) >> 10 )) MiB"
    debug_vmlinux
    crash_log "$run/vmcore-$what" "$what ELF" "$marker"
    crash_log "$run/vmcore-$what.kdump" "$what kdump-format" "$marker"
    rm -f "$run/vmcore-$what" "$run/vmcore-$what.kdump"
}
dump_id() { "$SD" info --json "$run/dumpA.img" "$run/dumpB.img" 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["dump_id"])' || true; }
report_times() {   # NAME: the times of a crash run
    local name=$1
    measured "$name: boot to crash $(( T_CRASH - T_START )) s; crash to saved dump and reboot $(( T_END - T_CRASH )) s (host clock)"
    local rec
    rec=$(guest_result "$name-after" record)
    [ -n "$rec" ] && measured "$name: capture run record: $rec"
    return 0
}

# --- scenario: kdump-tools (the package path) -------------------------------------------------
scenario_kdump_tools() {
    local m=stripedump-e2e-marker-kdump-tools-$RANDOM$RANDOM
    write_script kdump-tools "
say \"normal boot: up, \$(nproc) CPUs, \$(uname -r)\"
configure STRIPEDUMP_TARGETS=$TARGET_A,$TARGET_B
wait_kdump_ready
stripedump kdump show 2>&1 | out
stripedump kdump test >/run/test.out 2>&1; rc=\$?
out </run/test.out
result kdump_test_rc=\$rc
crash_now"
    write_script kdump-tools-after 'after_crash'
    say "kdump-tools: boot, configure, kdump test, crash; the capture boot runs stripedump"
    qemu_boot kdump-tools "$run/root.img" "$m"
    [ -n "$T_CRASH" ] || fail "kdump-tools: the guest never crashed"
    [ "$(guest_result kdump-tools kdump_test_rc)" = 0 ] \
        || fail "kdump-tools: stripedump kdump test found problems: $(guest_out kdump-tools | grep '^problem' | head -n3 | tr '\n' ' ')"
    console kdump-tools | grep -q 'stripedump: dump .* saved by stripedump' \
        || fail "kdump-tools: the capture boot did not save the dump with stripedump (console $E2E_DIR/serial-kdump-tools.log)"
    console kdump-tools | grep -q 'running makedumpfile' && fail "kdump-tools: makedumpfile ran although stripedump saved the dump"
    local t_crash=$T_CRASH t_start=$T_START t_end=$T_END
    qemu_boot kdump-tools-after "$run/root.img"
    T_CRASH=$t_crash T_START=$t_start T_END=$t_end
    guest_out kdump-tools-after | grep -q 'stripedump: dump .* saved by stripedump at' \
        || fail "kdump-tools: the boot after the crash has no journal line about the dump"
    guest_out kdump-tools-after | grep -q '^last capture: *dump .* saved by stripedump' \
        || fail "kdump-tools: stripedump kdump show does not name the saved dump"
    guest_out kdump-tools-after | grep -E 'saved by stripedump at' | head -n1 | sed 's/^/  journal: /'
    report_times kdump-tools
    check_members kdump-tools "$m"
    FIRST_ID=$(dump_id)
}

# --- scenario: fallback (a target is missing: kdump-tools' makedumpfile saves the crash) --------
scenario_fallback() {
    local m=stripedump-e2e-marker-fallback-$RANDOM$RANDOM before
    before=$(dump_id)
    write_script fallback "
say \"normal boot: up\"
configure STRIPEDUMP_TARGETS=$TARGET_A,$TARGET_MISSING STRIPEDUMP_WAIT=20
wait_kdump_ready
stripedump kdump test >/run/test.out 2>&1; rc=\$?
out </run/test.out
result kdump_test_rc=\$rc
crash_now"
    write_script fallback-after 'after_crash'
    say "fallback: a target that is not there; kdump-tools must save the crash with makedumpfile"
    qemu_boot fallback "$run/root.img" "$m"
    [ "$(guest_result fallback kdump_test_rc)" = 11 ] || fail "fallback: kdump test did not report the missing target (exit 11)"
    guest_out fallback | grep -q "problem: target $TARGET_MISSING does not exist" \
        || fail "fallback: kdump test does not name $TARGET_MISSING"
    console fallback | grep -q "did not appear within 20 s" || fail "fallback: the capture boot did not say why stripedump gave up"
    local t_crash=$T_CRASH t_start=$T_START t_end=$T_END
    qemu_boot fallback-after "$run/root.img"
    T_CRASH=$t_crash T_START=$t_start T_END=$t_end
    guest_out fallback-after | grep -q "NOT saved by stripedump: target $TARGET_MISSING did not appear within 20 s (exit 5); kdump-tools saved it with makedumpfile instead (/var/crash/" \
        || fail "fallback: the journal of the next boot does not say why stripedump did not save the crash, and where the makedumpfile dump is"
    guest_out fallback-after | grep 'NOT saved by stripedump' | head -n1 | sed 's/^/  journal: /'
    report_times fallback
    [ "$(dump_id)" = "$before" ] || fail "fallback: the stripedump disks were written although the dump was not taken"
    # the makedumpfile dump, read from the image (cleanly powered off) and handed to crash
    local flat
    flat=$(guest_out fallback-after | grep -o "/var/crash/[0-9]*/dump\.[0-9]*" | head -n1)
    [ -n "$flat" ] || fail "fallback: no /var/crash/*/dump.* named"
    debugfs -R "dump $flat $run/fallback.flat" "$run/root.img" >/dev/null 2>&1 || fail "fallback: debugfs cannot read $flat"
    makedumpfile -R "$run/fallback.kdump" <"$run/fallback.flat" >/dev/null 2>&1 || fail "fallback: makedumpfile -R of $flat failed"
    say "fallback: kdump-tools' dump $flat: $(( $(stat -c %s "$run/fallback.flat") >> 20 )) MiB (flattened, makedumpfile -c -d 31)"
    debug_vmlinux
    crash_log "$run/fallback.kdump" "fallback makedumpfile" "$m"
    rm -f "$run/fallback.flat" "$run/fallback.kdump"
}

# --- scenario: dracut (the package's dracut module as kdump-tools' capture initrd) -------------
scenario_dracut() {
    local m=stripedump-e2e-marker-dracut-$RANDOM$RANDOM before
    before=$(dump_id)
    write_script dracut "
say \"normal boot: up\"
configure STRIPEDUMP_TARGETS=$TARGET_A,$TARGET_B STRIPEDUMP_WAIT=90
t0=\$(up)
dracut --force --hostonly --add stripedump --add-drivers virtio_blk /var/lib/kdump/initrd-stripedump.img \"\$(uname -r)\" \
    >/run/dracut.log 2>&1 || { tail -n 20 /run/dracut.log | out; fail \"dracut --add stripedump failed\"; }
say \"dracut --add stripedump: \$(du -k /var/lib/kdump/initrd-stripedump.img | cut -f1) KiB in \$(awk -v a=\$t0 -v b=\$(up) 'BEGIN { printf \"%d\", b - a }') s\"
result dracut_initrd_kib=\$(du -k /var/lib/kdump/initrd-stripedump.img | cut -f1)
lsinitrd /var/lib/kdump/initrd-stripedump.img 2>/dev/null | grep -c -e 'opt/stripedump' -e 'python3.11' | sed 's/^/files of stripedump and python: /' | out
sed -i 's|^#\{0,1\}KDUMP_INITRD=.*|KDUMP_INITRD=/var/lib/kdump/initrd-stripedump.img|' /etc/default/kdump-tools
kdump-config unload >/dev/null 2>&1
kdump-config load 2>&1 | out
wait_kdump_ready
kdump-config show 2>&1 | grep -A1 -e 'kdump initrd' -e 'kexec command' | out
crash_now"
    write_script dracut-after 'after_crash
sed -i "s|^KDUMP_INITRD=.*|KDUMP_INITRD=/var/lib/kdump/initrd.img|" /etc/default/kdump-tools'
    say "dracut: build the capture initramfs with dracut --add stripedump, load it, crash"
    qemu_boot dracut "$run/root.img" "$m"
    console dracut | grep -q 'saved by stripedump' || fail "dracut: the capture initramfs did not save the dump with stripedump"
    console dracut | grep -q 'running makedumpfile' && fail "dracut: makedumpfile ran although stripedump saved the dump"
    local t_crash=$T_CRASH t_start=$T_START t_end=$T_END
    qemu_boot dracut-after "$run/root.img"
    T_CRASH=$t_crash T_START=$t_start T_END=$t_end
    guest_out dracut-after | grep -q 'stripedump: the targets hold dump .* complete' \
        || fail "dracut: the boot after the crash does not report the dump on the targets"
    guest_out dracut-after | grep 'the targets hold dump' | head -n1 | sed 's/^/  journal: /'
    measured "dracut: capture initramfs $(guest_result dracut dracut_initrd_kib) KiB (dracut --hostonly --add stripedump)"
    measured "dracut: boot to crash $(( T_CRASH - T_START )) s; crash to saved dump and reboot $(( T_END - T_CRASH )) s (host clock)"
    local stats
    stats=$(console dracut | grep -a 'stripedump: dump .* saved by stripedump' | tail -n1 | sed 's/^.*(\(.*capture kernel[^)]*\)).*$/\1/')
    [ -n "$stats" ] && measured "dracut: capture run: $stats"
    [ "$(dump_id)" != "$before" ] || fail "dracut: the targets still hold the earlier dump"
    check_members dracut "$m"
}

for s in $SCENARIOS; do
    case $s in
        kdump-tools) scenario_kdump_tools ;;
        fallback) scenario_fallback ;;
        dracut) scenario_dracut ;;
        *) fail "unknown scenario '$s' (E2E_SCENARIOS: kdump-tools fallback dracut)" ;;
    esac
done
say "PASS [$SCENARIOS]: kernel $krel, $ACCEL, $MEM MiB, crashkernel=$CRASHKERNEL; total $(( $(date +%s) - start )) s"
