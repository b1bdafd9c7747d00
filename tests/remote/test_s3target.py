"""s3:// targets against a real SeaweedFS cluster on loopback (tests/helpers/seaweed.py).

Every test runs the real CLI with the store's credentials in the standard AWS
variables (``store.env``) and checks the store with a client of its own: which
objects exist, which uploads are open, what a member object holds.  Nothing is
mocked: signatures are checked by the gateway, parts land on two volume
servers (replication 001), and the failure tests kill real servers of a store
of their own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from stripedump.dump.resources import fit_pool
from stripedump.errors import UsageError
from stripedump.format.structs import STATE_COMPLETE, MemberHeader, Trailer, TRAILER_SIZE
from stripedump.remote.s3url import MIB, S3Options, S3Url
from stripedump.tools import synth

from conftest import ROOT, CliResult, assert_one_line_error
from waiting import wait_until
from remote.test_sshtarget import same  # noqa: F401  (test_s3read imports it from here too)

SIZE = 48 * MIB


def core(vmcore, size: int, zero_share: int = 4):
    """A synthetic vmcore of ``size`` bytes of RAM (tools/synth's machine layout)."""
    return vmcore("kernel", loads=synth.demo_loads(size),
                  content=lambda pfn, ps: synth.page_content(pfn, ps, zero_share))


def sd(store, *args, timeout=240, env=None, **extra) -> CliResult:
    e = dict(env if env is not None else store.env, PYTHONPATH=ROOT, **extra)
    p = subprocess.run([sys.executable, "-m", "stripedump", *map(str, args)], env=e, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=timeout)
    return CliResult(p)


def start(store, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stripedump", *map(str, args)],
                            env=dict(store.env, PYTHONPATH=ROOT), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def claims_finished(data: bytes) -> bool:
    """A member object whose header or trailer says its dump completed."""
    try:
        h = MemberHeader.unpack(data[:4096], "object")
    except Exception:
        return False
    t = Trailer.unpack(data[-TRAILER_SIZE:], h.dump_id)
    return h.state == STATE_COMPLETE or (t is not None and t.state == STATE_COMPLETE)


# -- what the URL and the options say (no store) -----------------------------------------

def test_urls_and_options_are_checked_at_the_edge():
    u = S3Url.parse("s3://prof@my-bucket/crash/host1/m0.sd")
    assert (u.profile, u.bucket, u.key) == ("prof", "my-bucket", "crash/host1/m0.sd")
    assert S3Url.parse("s3://b12/k").profile is None
    for bad in ("s3://bucket", "s3://bucket/", "s3://ab/k", "s3://bucket/dir/", "s3://@bucket/k",
                "s3://-bucket/k"):
        with pytest.raises(UsageError):
            S3Url.parse(bad)
    for kw in ({"part_size": 4 * MIB}, {"in_flight": 0}, {"endpoint": "127.0.0.1:8333"}):
        with pytest.raises(UsageError):
            S3Options(**kw)


def test_part_size_grows_so_a_member_fits_in_10000_parts():
    o = S3Options()
    assert o.fit_member(50 << 30) is o                           # 50 GiB in 8 MiB parts: 6,400
    big = o.fit_member(1 << 40)                                  # 1 TiB: 105 MiB parts
    assert big.part_size == 105 * MIB and (1 << 40) <= big.part_size * 10000
    assert big.buffer_bytes() == 3 * big.part_size


def test_part_buffers_count_in_the_memory_limit():
    """The uploaders' parts (in flight + 1 filling, per s3:// target) come out of --memory-limit."""
    avail = 8 << 30
    plain = fit_pool(4, 2, MIB, 4096, 40 * MIB, avail=avail, as_room=None)
    with_s3 = fit_pool(4, 2, MIB, 4096, 40 * MIB, avail=avail, as_room=None, stream_bytes=32 * MIB)
    assert with_s3.slots < plain.slots
    assert with_s3.slots * with_s3.slot_size + 32 * MIB <= 40 * MIB
    with pytest.raises(UsageError, match="too small"):
        fit_pool(1, 2, MIB, 4096, 32 * MIB, avail=avail, as_room=None, stream_bytes=32 * MIB)


def test_an_s3_url_given_twice_is_refused(tmp_path, vmcore, cli):
    src = core(vmcore, 4 * MIB)
    res = cli("dump", "--disks", "s3://sd-a/m,s3://sd-a/m", src.path)
    assert_one_line_error(res, 4, "given twice")


# -- against the store ---------------------------------------------------------------------

def test_two_buckets_and_a_file_join_byte_identical(s3_store, tmp_path, vmcore):
    """The issue's first case: a dump over two buckets and a local file; join and verify read the
    objects where they are; nothing is left open."""
    st = s3_store
    src = core(vmcore, SIZE)
    local = tmp_path / "m2.sd"
    members = ["s3://sd-a/crash/m0.sd", "s3://sd-b/crash/m1.sd", str(local)]
    res = sd(st, "dump", "--disks", ",".join(members), "--s3-endpoint", st.endpoint, "--s3-part-size", "5M",
             "--codec", "lz4", "--json", src.path)
    assert res.rc == 0, res
    assert st.uploads("sd-a") == [] and st.uploads("sd-b") == []
    sizes = {**st.keys("sd-a"), **st.keys("sd-b")}
    assert set(sizes) == {"crash/m0.sd", "crash/m1.sd"}
    import json
    summary = json.loads(res.out)
    assert [m["bytes"] for m in summary["members"]][:2] == [sizes["crash/m0.sd"], sizes["crash/m1.sd"]]
    assert claims_finished(st.get("sd-a", "crash/m0.sd"))
    out = tmp_path / "joined"
    j = sd(st, "join", members[2], members[1], members[0], "-o", out, "--s3-endpoint", st.endpoint)
    assert j.rc == 0, j
    assert same(out, src.path)
    v = sd(st, "verify", *members, "--s3-endpoint", st.endpoint)
    assert v.rc == 0 and "all checksums good" in v.out, v


def test_wrong_credentials_are_one_line_and_nothing_is_written(s3_store, tmp_path, vmcore):
    st = s3_store
    src = core(vmcore, 4 * MIB)
    local = tmp_path / "m1.sd"
    for var, value, needle in (("AWS_SECRET_ACCESS_KEY", "not-the-secret", "signature"),
                               ("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY", "access key")):
        res = sd(st, "dump", "--disks", f"s3://sd-a/m0,{local}", "--s3-endpoint", st.endpoint, src.path,
                 env=dict(st.env, **{var: value}))
        assert_one_line_error(res, 5, "s3://sd-a/m0", needle)
        assert not local.exists()
        assert st.keys("sd-a") == {} and st.uploads("sd-a") == []


def test_a_missing_bucket_is_one_line_and_nothing_is_written(s3_store, tmp_path, vmcore):
    st = s3_store
    src = core(vmcore, 4 * MIB)
    local = tmp_path / "m1.sd"
    res = sd(st, "dump", "--disks", f"s3://sd-a/m0,s3://sd-no-such-bucket/m1,{local}", "--s3-endpoint",
             st.endpoint, src.path)
    assert_one_line_error(res, 5, "sd-no-such-bucket", "does not exist")
    assert not local.exists()
    assert st.keys("sd-a") == {} and st.uploads("sd-a") == []     # the other target's upload aborted


def test_an_unreachable_endpoint_is_one_line(tmp_path, vmcore):
    from seaweed import free_port
    src = core(vmcore, 4 * MIB)
    env = dict(os.environ, AWS_ACCESS_KEY_ID="a", AWS_SECRET_ACCESS_KEY="b", AWS_MAX_ATTEMPTS="2",
               AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    t0 = time.monotonic()
    res = sd(None, "dump", "--disks", f"s3://sd-a/m0,{tmp_path / 'm1'}", "--s3-endpoint",
             f"http://127.0.0.1:{free_port()}", "--io-timeout", "10", src.path, env=env)
    assert_one_line_error(res, 5, "cannot connect to http://127.0.0.1:")
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "m1").exists()


def test_an_existing_object_is_refused_without_force(s3_store, tmp_path, vmcore):
    st = s3_store
    src = core(vmcore, 4 * MIB)
    st.client().put_object(Bucket="sd-a", Key="m0", Body=b"an earlier crash dump")
    res = sd(st, "dump", "--disks", f"s3://sd-a/m0,{tmp_path / 'm1'}", "--s3-endpoint", st.endpoint, src.path)
    assert_one_line_error(res, 4, "exists", "--force")
    assert st.get("sd-a", "m0") == b"an earlier crash dump"
    assert not (tmp_path / "m1").exists()
    res = sd(st, "dump", "--disks", f"s3://sd-a/m0,{tmp_path / 'm1'}", "--s3-endpoint", st.endpoint,
             "--force", src.path)
    assert res.rc == 0, res
    assert claims_finished(st.get("sd-a", "m0"))


def test_an_open_upload_to_the_key_is_refused_and_force_aborts_it(s3_store, tmp_path, vmcore):
    """Another dump writing the key, or one killed with its upload open: refused (exit 4)."""
    st = s3_store
    src = core(vmcore, 4 * MIB)
    st.client().create_multipart_upload(Bucket="sd-a", Key="m0")
    res = sd(st, "dump", "--disks", "s3://sd-a/m0", "--s3-endpoint", st.endpoint, src.path)
    assert_one_line_error(res, 4, "unfinished upload", "--force")
    assert st.uploads("sd-a") == ["m0"] and st.keys("sd-a") == {}
    res = sd(st, "dump", "--disks", "s3://sd-a/m0", "--s3-endpoint", st.endpoint, "--force", src.path)
    assert res.rc == 0, res
    assert st.uploads("sd-a") == [] and list(st.keys("sd-a")) == ["m0"]


def test_tls_is_verified_and_a_ca_bundle_is_taken(s3_store, tmp_path, vmcore):
    st = s3_store
    src = core(vmcore, 4 * MIB)
    res = sd(st, "dump", "--disks", "s3://sd-a/m0", "--s3-endpoint", st.https_endpoint, src.path)
    assert_one_line_error(res, 5, "TLS", "certificate")
    assert st.uploads("sd-a") == []
    res = sd(st, "dump", "--disks", "s3://sd-a/m0", "--s3-endpoint", st.https_endpoint,
             "--s3-ca-bundle", st.ca_file, src.path)
    assert res.rc == 0, res
    out = tmp_path / "joined"
    j = sd(st, "join", "s3://sd-a/m0", "-o", out, "--s3-endpoint", st.https_endpoint, "--s3-ca-bundle", st.ca_file)
    assert j.rc == 0 and same(out, src.path), j


def test_a_profile_names_its_own_endpoint_and_credentials(s3_store, tmp_path, vmcore):
    """s3://PROFILE@BUCKET/KEY: the per-target endpoint, from the standard config files; the
    target without a profile takes --s3-endpoint (here a dead one would fail it: not used)."""
    st = s3_store
    src = core(vmcore, 8 * MIB)
    from seaweed import ACCESS_KEY, SECRET_KEY
    with open(st.config_file, "w") as f:
        f.write(f"[profile crash]\nendpoint_url = {st.endpoint}\nregion = us-east-1\n"
                "s3 =\n    addressing_style = path\n")
    with open(st.credentials_file, "w") as f:
        f.write(f"[crash]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n")
    env = {k: v for k, v in st.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    try:
        res = sd(st, "dump", "--disks", "s3://crash@sd-a/m0,s3://crash@sd-b/m1", src.path, env=env)
        assert res.rc == 0, res
        out = tmp_path / "joined"
        j = sd(st, "join", "s3://crash@sd-b/m1", "s3://crash@sd-a/m0", "-o", out, env=env)
        assert j.rc == 0 and same(out, src.path), j
        # a profile that is not in the config is the user's configuration: a usage error (2), on
        # both sides, and nothing written
        res = sd(st, "dump", "--disks", f"s3://nosuchprofile@sd-a/m2,{tmp_path / 'm3'}", src.path, env=env)
        assert_one_line_error(res, 2, "profile (nosuchprofile) could not be found")
        assert not (tmp_path / "m3").exists()
        res = sd(st, "info", "s3://nosuchprofile@sd-a/m0", env=env)
        assert_one_line_error(res, 2, "member s3://nosuchprofile@sd-a/m0: the S3 configuration")
    finally:
        for p in (st.config_file, st.credentials_file):
            open(p, "w").close()


# -- failures during the dump (a store of the test's own) ---------------------------------------

def _kill_when_uploading(st, proc, bucket, what):
    """Wait until the dump has an upload open with a part stored in ``bucket``, then kill ``what``."""
    c = st.client()

    def has_part():
        for u in c.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            if c.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts"):
                return True
        return False
    wait_until(has_part, "a part stored", timeout=60, proc=proc, interval=0.1)
    st.kill(what)


@pytest.mark.slow
@pytest.mark.parametrize("what", ["s3", "volume1"])
def test_a_server_killed_mid_dump_stops_it(s3_own_store, tmp_path, vmcore, what):
    """--on-disk-error stop: exit 8, and nothing claims to be complete; the rest can be recovered."""
    st = s3_own_store
    src = core(vmcore, 160 * MIB, zero_share=1)
    local = tmp_path / "m2.sd"
    p = start(st, "dump", "--disks", f"s3://sd-a/m0,s3://sd-b/m1,{local}", "--s3-endpoint", st.endpoint,
              "--s3-part-size", "5M", "--codec", "none", "--io-timeout", "30", src.path)
    _kill_when_uploading(st, p, "sd-a", what)
    out, err = p.communicate(timeout=240)
    assert p.returncode == 8, (out, err)
    assert "Traceback" not in err, err
    from stripedump.read.member import MemberReader
    r = MemberReader(str(local))
    assert r.header.state != STATE_COMPLETE and (r.trailer() is None or r.trailer().state != STATE_COMPLETE)
    if what == "volume1":
        st.start(what)
    else:
        st.start(what)
    for b in ("sd-a", "sd-b"):
        for k in st.keys(b):
            assert not claims_finished(st.get(b, k)), (b, k)
    j = sd(st, "join", "--allow-incomplete", "s3://sd-a/m0", "s3://sd-b/m1", local, "-o", tmp_path / "j",
           "--s3-endpoint", st.endpoint)
    assert j.rc == 0, j


@pytest.mark.slow
@pytest.mark.parametrize("what", ["s3", "volume1"])
def test_a_server_killed_mid_dump_continue_the_survivors_join(s3_own_store, tmp_path, vmcore, what):
    """--on-disk-error continue: the S3 targets are dropped, every chunk of theirs goes to the local
    member (their uploads were never completed), and that survivor joins alone, byte-identical."""
    st = s3_own_store
    src = core(vmcore, 160 * MIB, zero_share=1)
    local = tmp_path / "m2.sd"
    p = start(st, "dump", "--disks", f"s3://sd-a/m0,s3://sd-b/m1,{local}", "--s3-endpoint", st.endpoint,
              "--s3-part-size", "5M", "--codec", "none", "--io-timeout", "30", "--on-disk-error", "continue",
              src.path)
    _kill_when_uploading(st, p, "sd-a", what)
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, (out, err)
    assert "dropped" in err and "join the other members without it" in err, err
    st.start(what)
    for b in ("sd-a", "sd-b"):
        assert st.keys(b) == {}, b          # no member object of a dropped target
    j = sd(st, "join", local, "-o", tmp_path / "j")
    assert j.rc == 0, j
    assert same(tmp_path / "j", src.path)


@pytest.mark.slow
def test_a_dump_killed_with_sigkill_leaves_no_finished_member(s3_store, tmp_path, vmcore):
    """SIGKILL to the dump's process group: the uploaders (a session of their own) see their
    streams end without a trailer and abort; no object appears, no upload stays open, and
    --allow-incomplete recovers what the local member holds."""
    st = s3_store
    src = core(vmcore, 160 * MIB, zero_share=1)
    local = tmp_path / "m2.sd"
    p = start(st, "dump", "--disks", f"s3://sd-a/m0,s3://sd-b/m1,{local}", "--s3-endpoint", st.endpoint,
              "--s3-part-size", "5M", "--codec", "none", src.path)
    c = st.client()
    wait_until(lambda: any(c.list_parts(Bucket="sd-a", Key=u["Key"], UploadId=u["UploadId"]).get("Parts")
                           for u in c.list_multipart_uploads(Bucket="sd-a").get("Uploads", [])),
               "a part stored", timeout=60, proc=p, interval=0.1)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    p.stdout.close()
    p.stderr.close()
    wait_until(lambda: not st.uploads("sd-a") and not st.uploads("sd-b"), "the uploads aborted", timeout=60)
    assert st.keys("sd-a") == {} and st.keys("sd-b") == {}
    j = sd(st, "join", "--allow-incomplete", "s3://sd-a/m0", "s3://sd-b/m1", local, "-o", tmp_path / "j",
           "--s3-endpoint", st.endpoint)
    assert j.rc == 0, j
    assert "missing" in j.err
