"""stripedump kdump (service/): the settings, the capture run, kdump-utils' collector, the report, the wiring check.

Every capture here is a real `stripedump kdump capture` process dumping a
synthetic vmcore onto real files (or loop devices), with --no-reboot; the
members are then joined and compared with the source.
"""

import json
import os
import subprocess
import sys

import pytest

from stripedump.errors import UsageError
from stripedump.service import capture, records, settings, wiring

from conftest import ROOT, assert_one_line_error


def _config(path, **kv):
    lines = ["# test settings", *(f'{k}="{v}"' for k, v in kv.items())]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _joined_equals(cli, members, src, tmp_path):
    out = tmp_path / "joined"
    res = cli("join", *members, "-o", out, "--force")
    assert res.rc == 0, res
    with open(src, "rb") as a, open(out, "rb") as b:
        assert a.read() == b.read()
    os.unlink(out)


# ------------------------------------------------------------------ settings
def test_settings_are_read_not_executed_and_checked_once(tmp_path):
    p = tmp_path / "stripedump"
    p.write_text('# comment\nexport STRIPEDUMP_TARGETS="/dev/disk/by-id/a, /dev/disk/by-id/b"\n'
                 "STRIPEDUMP_CODEC=zstd:3  # inline comment\nSTRIPEDUMP_DUMP_LEVEL=31\n"
                 "STRIPEDUMP_WORKERS=4\nSTRIPEDUMP_ON_FAILURE=reboot\nSTRIPEDUMP_WAIT=5\n"
                 "STRIPEDUMP_SSH_OPTIONS='IdentityFile=/k UserKnownHostsFile=/h'\n"
                 "OTHER_TOOL=$(touch /tmp/never)\n")
    s = settings.load(str(p))
    assert s.targets == ("/dev/disk/by-id/a", "/dev/disk/by-id/b")
    assert (s.codec, s.dump_level, s.workers, s.on_failure, s.on_success, s.wait) == \
        ("zstd:3", 31, 4, "reboot", "reboot", 5.0)
    assert s.ssh_options == ("IdentityFile=/k", "UserKnownHostsFile=/h")
    assert s.dump_args(force=False) == ["--disks", "/dev/disk/by-id/a,/dev/disk/by-id/b", "--codec", "zstd:3",
                                        "--io-timeout", "60", "--dump-level", "31", "--workers", "4",
                                        "--ssh-option", "IdentityFile=/k", "--ssh-option", "UserKnownHostsFile=/h"]
    assert not os.path.exists("/tmp/never")
    assert not settings.load(str(tmp_path / "missing")).configured


@pytest.mark.parametrize("line, needle", [
    ("STRIPEDUMP_CODEC=lz5", "line 2: STRIPEDUMP_CODEC"),
    ("STRIPEDUMP_DUMP_LEVEL=32", "STRIPEDUMP_DUMP_LEVEL: must be from 0 to 31"),
    ("STRIPEDUMP_TARGETS=sdb", "is neither an absolute path nor an ssh:// URL"),
    ("STRIPEDUMP_ON_FAILURE=shell", "choose one of makedumpfile, reboot"),
    ("STRIPEDUMP_TARGET=/dev/sdb", "STRIPEDUMP_TARGET: unknown setting"),
    ("STRIPEDUMP_WAIT=-1", "must be a positive number of seconds"),
    ("this is not a setting", "line 2: expected KEY=VALUE"),
])
def test_a_bad_setting_names_its_line(tmp_path, line, needle):
    p = tmp_path / "stripedump"
    p.write_text(f"# first line\n{line}\n")
    with pytest.raises(UsageError, match=needle.replace("(", r"\(")):
        settings.load(str(p))


# ------------------------------------------------------------------ capture
def test_capture_dumps_records_and_overwrites_only_its_own_dump(tmp_path, vmcore, cli):
    src = vmcore()
    members = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    conf = _config(tmp_path / "conf", STRIPEDUMP_TARGETS=",".join(members), STRIPEDUMP_CODEC="lz4")
    rdir = tmp_path / "records"
    for run in (1, 2):          # the second crash overwrites the first dump (--force: only members there)
        res = cli("kdump", "capture", "--config", conf, "--source", src.path, "--records", rdir, "--no-reboot")
        assert res.rc == 0, res
        assert "saved by stripedump" in res.out and "not rebooting" in res.out
        assert ("--force" in res.out) == (run == 2)
        _joined_equals(cli, members, src.path, tmp_path)
    recs = records.load_all(str(rdir))
    assert [r["status"] for _, r in recs] == ["saved", "saved"]
    assert recs[-1][1]["dump"]["dump_id"] and recs[-1][1]["targets"] == members
    mem = recs[-1][1]["memory"]        # what sizes crashkernel= after a real crash
    assert mem["mem_total_kib"] > 0 and 0 < mem["mem_available_min_kib"] <= mem["mem_available_start_kib"]
    assert mem["peak_pss_kib"] > 1024


def test_capture_refuses_a_target_that_holds_something_else_and_leaves_it_to_makedumpfile(tmp_path, vmcore, cli):
    src = vmcore()
    keep = tmp_path / "precious"
    keep.write_bytes(b"somebody's data" * 1000)
    conf = _config(tmp_path / "conf", STRIPEDUMP_TARGETS=f"{tmp_path}/m0,{keep}")
    res = cli("kdump", "capture", "--config", conf, "--source", src.path, "--records", tmp_path / "r", "--no-reboot")
    assert res.rc == 4, res                              # TargetRefused
    assert "NOT saved by stripedump" in res.out and "kdump-tools saves it with makedumpfile now" in res.out
    assert "not rebooting" not in res.out                # failure + makedumpfile: return, kdump-tools goes on
    assert keep.read_bytes() == b"somebody's data" * 1000
    (_, rec), = records.load_all(str(tmp_path / "r"))
    assert rec["status"] == "failed" and rec["exit_code"] == 4 and "precious" in rec["error"]


def test_capture_gives_up_on_a_device_that_never_appears(tmp_path, vmcore, cli):
    src = vmcore()
    conf = _config(tmp_path / "conf", STRIPEDUMP_TARGETS="/dev/disk/by-id/stripedump-test-absent",
                   STRIPEDUMP_WAIT="1")
    res = cli("kdump", "capture", "--config", conf, "--source", src.path, "--records", tmp_path / "r", "--no-reboot")
    assert res.rc == 5, res
    assert "did not appear within 1 s" in res.out


def test_unconfigured_capture_does_nothing(tmp_path, vmcore, cli):
    src = vmcore()
    conf = _config(tmp_path / "conf", STRIPEDUMP_CODEC="lz4")
    res = cli("kdump", "capture", "--config", conf, "--source", src.path, "--records", tmp_path / "r", "--no-reboot")
    assert res.rc == 0 and "not configured" in res.out, res
    assert not (tmp_path / "r").exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["conf", os.path.basename(src.path)])


def test_a_silent_dump_is_stopped(tmp_path):
    """The watchdog: a dump that prints nothing (here: its source is a FIFO nobody writes) is killed."""
    fifo = tmp_path / "vmcore"
    os.mkfifo(fifo)
    s = settings.Settings(str(tmp_path / "conf"), targets=(str(tmp_path / "m0"),))
    rc, summary, error = capture.run_dump(s, str(fifo), say=lambda m: None, silence=3)
    assert (rc, summary) == (8, {}) and "printed nothing for 3 s" in error


# ------------------------------------------------------------------ kdump-utils' core_collector
def test_kdump_utils_core_collector_contract(tmp_path, vmcore, cli):
    """kdump-utils (dracut/99kdumpbase/kdump.sh, dump_fs) runs, for a filesystem target:

        $CORE_COLLECTOR /proc/vmcore "$_dump_fs_path/vmcore-incomplete" > /dev/console 2>&1
        (exit 0) sync -f "$_dump_fs_path/vmcore-incomplete"; mv ... vmcore-incomplete ... vmcore

    with kdump.conf's ``core_collector stripedump kdump collect --config FILE``
    (word-split, unquoted).  The same shell lines here, with the synthetic vmcore
    in the place of /proc/vmcore (the one word a test machine cannot provide)."""
    src = vmcore()
    members = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    conf = _config(tmp_path / "conf", STRIPEDUMP_TARGETS=",".join(members))
    dump_dir = tmp_path / "var" / "crash" / "127.0.0.1-2026-12-07-12:00:00"
    dump_dir.mkdir(parents=True)
    stripedump = f"{sys.executable} -m stripedump"
    script = """
        CORE_COLLECTOR="$1 kdump collect --config $2"
        _dump_fs_path=$3/
        $CORE_COLLECTOR "$4" "$_dump_fs_path/vmcore-incomplete" > "$3/console.log" 2>&1
        _dump_exitcode=$?
        if [ $_dump_exitcode -eq 0 ]; then
            sync -f "$_dump_fs_path/vmcore-incomplete" || exit 90
            mv "$_dump_fs_path/vmcore-incomplete" "$_dump_fs_path/vmcore"
        fi
        exit $_dump_exitcode
    """
    r = subprocess.run(["sh", "-c", script, "sh", stripedump, conf, str(dump_dir), src.path],
                       env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r, (dump_dir / "console.log").read_text())
    assert sorted(os.listdir(dump_dir)) == ["console.log", "vmcore"]
    summary = json.loads((dump_dir / "vmcore").read_text())
    assert summary["dump_id"] and [m["path"] for m in summary["members"]] == members
    assert "stripedump join" in summary["note"]
    _joined_equals(cli, members, src.path, tmp_path)
    # a failing dump: non-zero, and no vmcore-incomplete for kdump-utils to sync or rename
    os.unlink(dump_dir / "vmcore")
    (tmp_path / "m1").write_bytes(b"not ours" * 100)
    r = subprocess.run(["sh", "-c", script, "sh", stripedump, conf, str(dump_dir), src.path],
                       env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
    assert r.returncode == 4
    assert sorted(os.listdir(dump_dir)) == ["console.log"]


# ------------------------------------------------------------------ the report at the next boot
def test_report_says_each_capture_once_and_finds_a_dump_no_record_names(tmp_path, vmcore, cli):
    src = vmcore()
    members = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    conf = _config(tmp_path / "conf", STRIPEDUMP_TARGETS=",".join(members))
    rdir = tmp_path / "records"
    assert cli("kdump", "capture", "--config", conf, "--source", src.path, "--records", rdir,
               "--no-reboot").rc == 0
    first = cli("kdump", "report", "--config", conf, "--records", rdir)
    assert first.rc == 0 and first.out.count("saved by stripedump") == 1, first
    assert cli("kdump", "report", "--config", conf, "--records", rdir).out == ""
    # a dump the capture initramfs took (its record could not reach the root filesystem)
    assert cli("dump", "-q", "--force", "--disks", ",".join(members), src.path).rc == 0
    found = cli("kdump", "report", "--config", conf, "--records", rdir)
    assert "the targets hold dump" in found.out and "complete" in found.out, found
    assert cli("kdump", "report", "--config", conf, "--records", rdir).out == ""


# ------------------------------------------------------------------ kdump show / test
@pytest.fixture
def kdump_tools(tmp_path):
    """A root with kdump-tools installed, enabled and loaded (crashkernel 384 MiB), and the drop-in."""
    root = tmp_path / "root"
    for path, text in {"usr/sbin/kdump-config": "#!/bin/sh\n",
                       "etc/default/kdump-tools": "USE_KDUMP=1\nKDUMP_COREDIR=\"/var/crash\"\n",
                       "sys/kernel/kexec_crash_loaded": "1\n",
                       "sys/kernel/kexec_crash_size": f"{384 << 20}\n",
                       "proc/cmdline": "BOOT_IMAGE=/vmlinuz root=/dev/vda ro crashkernel=384M-:384M\n",
                       "var/crash/kexec_cmd": '/sbin/kexec -p --command-line="BOOT_IMAGE=/vmlinuz root=/dev/vda ro '
                                              'reset_devices systemd.unit=kdump-tools-dump.service nr_cpus=1 '
                                              'irqpoll usbcore.nousb" --initrd=/var/lib/kdump/initrd.img '
                                              '/var/lib/kdump/vmlinuz\n',
                       wiring.DROPIN.lstrip("/"): "[Service]\n"}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def _wiring(tmp_path, root, *targets, **kv):
    conf = _config(tmp_path / "conf", STRIPEDUMP_TARGETS=",".join(targets), **kv)
    return wiring.Wiring(settings.load(conf), str(root), str(tmp_path / "records")).check()


def test_wiring_of_a_ready_machine_has_no_problems(tmp_path, kdump_tools, loop_device):
    disk = loop_device(64 << 20)
    w = _wiring(tmp_path, kdump_tools, disk)
    # a loop device's /dev/loopN is not a stable name: the one problem
    assert w.problems == [p for p in w.problems if "is not a stable name" in p] and len(w.problems) == 1
    text = wiring.render(w)
    assert "capture kernel loaded" in text and "nr_cpus=1" in text and "1 worker(s)" in text
    assert f"{disk} ({disk}, 64 MiB): blank" in text
    assert "384 MiB reserved" in text


@pytest.mark.parametrize("change, needle", [
    ("no kdump-tools", "kdump-tools is not installed"),
    ("disabled", "kdump-tools is disabled: set USE_KDUMP=1"),
    ("not loaded", "has not loaded a capture kernel"),
    ("small crashkernel", "crashkernel= reserves 128 MiB"),
    ("other unit", "will not boot kdump-tools-dump.service"),
    ("no drop-in", "is missing: reinstall the stripedump package"),
])
def test_each_kdump_tools_problem_says_what_to_change(tmp_path, kdump_tools, change, needle):
    r = kdump_tools
    if change == "no kdump-tools":
        os.unlink(r / "usr/sbin/kdump-config")
    elif change == "disabled":
        (r / "etc/default/kdump-tools").write_text("USE_KDUMP=0\n")
    elif change == "not loaded":
        (r / "sys/kernel/kexec_crash_loaded").write_text("0\n")
    elif change == "small crashkernel":
        (r / "sys/kernel/kexec_crash_size").write_text(f"{128 << 20}\n")
    elif change == "other unit":
        (r / "sys/kernel/kexec_crash_loaded").write_text("0\n")      # not loaded: computed from the defaults
        (r / "etc/default/kdump-tools").write_text('USE_KDUMP=1\nKDUMP_CMDLINE_APPEND="reset_devices '
                                                   'systemd.unit=my-dump.service"\n')
    else:
        os.unlink(r / wiring.DROPIN.lstrip("/"))
    w = _wiring(tmp_path, r, str(tmp_path / "m0"))
    assert any(needle in p for p in w.problems), w.problems


def test_targets_that_stripedump_would_refuse_are_problems(tmp_path, kdump_tools, loop_device, vmcore, cli):
    fs_disk, dump_disk = loop_device(64 << 20), loop_device(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", fs_disk], check=True)
    assert cli("dump", "-q", "--force", "--disks", dump_disk, vmcore().path).rc == 0
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    w = _wiring(tmp_path, kdump_tools, fs_disk, dump_disk, str(plain), "/dev/disk/by-id/absent-for-test")
    text = "\n".join(w.problems)
    assert f"target {fs_disk} holds an ext2/3/4 filesystem" in text and "wipefs -a" in text
    assert f"target {plain} is a regular file" in text
    assert "target /dev/disk/by-id/absent-for-test does not exist" in text
    assert f"target {dump_disk} holds" not in text           # an earlier dump is what it may overwrite
    assert "holds a stripedump dump (the next crash overwrites it)" in wiring.render(w)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", fs_disk, str(mnt)], check=True)
    try:
        w = _wiring(tmp_path, kdump_tools, fs_disk)
        assert any(f"target {fs_disk} is mounted ({mnt})" in p for p in w.problems), w.problems
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_kdump_test_exit_code_and_one_line_error(tmp_path, cli):
    conf = _config(tmp_path / "conf", STRIPEDUMP_CODEC="lz4")
    res = cli("kdump", "test", "--config", conf, "--records", tmp_path / "r")
    assert res.rc == 11 and "problem: no targets" in res.out
    assert_one_line_error(res, 11, "kdump test:", "problem(s)")
    assert cli("kdump", "show", "--config", conf, "--records", tmp_path / "r").rc == 0
    assert_one_line_error(cli("kdump", "collect", "--config", conf, "onlyone"), 2, "required: DEST")
    bad = _config(tmp_path / "bad", STRIPEDUMP_DUMP_LEVEL="99")
    assert_one_line_error(cli("kdump", "show", "--config", bad), 2, "STRIPEDUMP_DUMP_LEVEL")


def test_report_of_a_failed_capture_names_the_makedumpfile_dump(tmp_path):
    """kdump-tools saved the crash in KDUMP_COREDIR/YYYYMMDDHHMM/dump.YYYYMMDDHHMM after stripedump failed."""
    import time
    coredir, rdir = tmp_path / "crash", tmp_path / "records"
    t = time.time()
    stamp = time.strftime("%Y%m%d%H%M", time.localtime(t))
    (coredir / stamp).mkdir(parents=True)
    (coredir / stamp / f"dump.{stamp}").write_bytes(b"x")
    (coredir / "201001010000").mkdir()                  # an older crash's directory: not this one
    (coredir / "201001010000" / "dump.201001010000").write_bytes(b"x")
    records.add(str(rdir), {"time": t, "status": "failed", "exit_code": 5, "targets": ["/dev/x"],
                            "error": "target /dev/x did not appear within 90 s", "on_failure": "makedumpfile",
                            "coredir": str(coredir), "reported": None})
    lines = []
    assert records.report(str(rdir), (), lines.append) == 1
    assert "NOT saved by stripedump: target /dev/x did not appear within 90 s (exit 5)" in lines[0]
    assert f"kdump-tools saved it with makedumpfile instead ({coredir}/{stamp}/dump.{stamp})" in lines[0]
