"""``s3://[PROFILE@]BUCKET/KEY``: parsing, the client settings, and S3's answers as one-line errors.

Why a module of its own: the dump's uploader (s3put.py, started by
s3target.py) and the readers (s3read.py) must agree on what a member URL
names, on which endpoint, credentials and CA certificates reach it, and on
how a refusal reads; this is that agreement, and the only place that builds
an S3 client.

The client library is botocore (the core of boto3, without it): it reads
credentials, endpoints and settings exactly as the AWS CLI and every SDK do
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, ``~/.aws/credentials`` and ``~/.aws/config`` or
``AWS_SHARED_CREDENTIALS_FILE``/``AWS_CONFIG_FILE``, ``endpoint_url`` and
``ca_bundle`` in a profile, ``AWS_ENDPOINT_URL_S3``, ``AWS_CA_BUNDLE``,
instance and container roles), retries what S3 calls retryable with
backoff, and signs with SigV4.  It is imported only when an ``s3://`` member
is written or read (docs/kdump.md: what it costs a capture kernel).

Where a member is:

* ``s3://BUCKET/KEY``: the default profile (or ``AWS_PROFILE``), at
  ``--s3-endpoint`` when given, else where the configuration says (AWS);
* ``s3://PROFILE@BUCKET/KEY``: that profile's credentials and its own
  ``endpoint_url`` and ``ca_bundle`` (a per-target endpoint: two stores,
  each with its own keys, in one dump); ``--s3-endpoint`` is not applied.

TLS is verified (botocore's default); ``--s3-ca-bundle FILE`` (or a
profile's ``ca_bundle``, or ``AWS_CA_BUNDLE``) names the certificates that
sign a private store's.  There is no switch to turn verification off.
"""

from __future__ import annotations

from ..errors import UsageError
from ..runtime.plain import Frozen

SCHEME = "s3://"
MIB = 1 << 20
MIN_PART = 5 * MIB           # S3's smallest part (all but the last)
MAX_PART = 5 << 30           # and its largest
MAX_PARTS = 10000            # parts in one multipart upload
DEFAULT_PART = 8 * MIB       # the part size unless --s3-part-size: 8 MiB is what the AWS CLI uses
DEFAULT_IN_FLIGHT = 2        # parts uploading at once per target, while a third is being filled
# botocore's "standard" retry mode: up to ATTEMPTS tries of one request (throttling, 5xx, timeouts,
# connections reset or refused), waiting a random time up to 1, 2, 4, 8 s (base 2, capped at 20 s)
# between them; a profile's or the environment's max_attempts / retry_mode win over this
ATTEMPTS = 5


def is_s3(path) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


class S3Url(Frozen):
    """``s3://[PROFILE@]BUCKET/KEY``, parsed once; ``what`` names the role in errors ("target", "member")."""
    __slots__ = ("profile", "bucket", "key")

    def __init__(self, profile: str | None, bucket: str, key: str):
        object.__setattr__(self, "profile", profile)
        object.__setattr__(self, "bucket", bucket)
        object.__setattr__(self, "key", key)

    @classmethod
    def parse(cls, url: str, what: str = "target") -> "S3Url":
        if not is_s3(url):
            raise UsageError(f"{what} {url}: not an s3:// URL")
        rest = url[len(SCHEME):]
        where, slash, key = rest.partition("/")
        profile = None
        if "@" in where:
            profile, where = where.split("@", 1)
            if not profile or any(c.isspace() for c in profile):
                raise UsageError(f"{what} {url}: bad profile name {profile!r}")
        bucket = where
        if not slash or not key:
            raise UsageError(f"{what} {url}: give s3://[PROFILE@]BUCKET/KEY (the member's object key)")
        if not 3 <= len(bucket) <= 63 or not all(c.isalnum() or c in ".-_" for c in bucket) \
                or not bucket[0].isalnum():
            raise UsageError(f"{what} {url}: bad bucket name {bucket!r} (3-63 letters, digits, '.', '-')")
        if key.endswith("/"):
            raise UsageError(f"{what} {url}: give the member's object key, not a prefix")
        if len(key.encode()) > 1024:
            raise UsageError(f"{what} {url}: the key is longer than S3's 1024 bytes")
        return cls(profile, bucket, key)

    @property
    def ident(self) -> tuple:
        """What makes two targets the same object (a second one is refused)."""
        return ("s3", self.profile, self.bucket, self.key)

    def __str__(self) -> str:
        return f"{SCHEME}{self.profile + '@' if self.profile else ''}{self.bucket}/{self.key}"


class S3Options(Frozen):
    """The command line's S3 settings (parsed at the CLI edge): the endpoint and CA bundle of every
    s3:// member without a profile of its own, and the dump's part size and parts in flight."""
    __slots__ = ("endpoint", "ca_bundle", "part_size", "in_flight")

    def __init__(self, endpoint: str | None = None, ca_bundle: str | None = None,
                 part_size: int = DEFAULT_PART, in_flight: int = DEFAULT_IN_FLIGHT):
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise UsageError(f"--s3-endpoint {endpoint}: give http://HOST[:PORT] or https://HOST[:PORT]")
        if not MIN_PART <= part_size <= MAX_PART:
            raise UsageError(f"--s3-part-size must be between {MIN_PART >> 20}M (S3's smallest part) "
                             f"and {MAX_PART >> 30}G")
        if not 1 <= in_flight <= 64:
            raise UsageError("--s3-parts-in-flight must be between 1 and 64")
        for k, v in (("endpoint", endpoint), ("ca_bundle", ca_bundle), ("part_size", part_size),
                     ("in_flight", in_flight)):
            object.__setattr__(self, k, v)

    def buffer_bytes(self) -> int:
        """Memory of one s3:// target's uploader for its parts: those in flight and the one filling."""
        return (self.in_flight + 1) * self.part_size

    def fit_member(self, bound: int) -> "S3Options":
        """These options with the part size raised (to whole MiB) so that a member of up to ``bound``
        bytes fits in S3's 10,000 parts."""
        need = -(-bound // MAX_PARTS)
        if need <= self.part_size:
            return self
        return self._replace(part_size=min(MAX_PART, -(-need // MIB) * MIB))


def botocore_missing() -> str:
    return ("s3:// members need the botocore library, which is not installed "
            "(pip install 'stripedump[s3]', or Debian's python3-botocore)")


def make_client(url: S3Url, opts: S3Options | None, connect_timeout: float, read_timeout: float,
                pool: int = 10):
    """A botocore S3 client for ``url``: its profile's settings, else ``opts``' endpoint and CA bundle."""
    try:
        import botocore.session
        from botocore.config import Config
    except ImportError:
        raise UsageError(botocore_missing()) from None
    from botocore.exceptions import BotoCoreError
    opts = opts or S3Options()
    try:
        session = botocore.session.Session(profile=url.profile)
        kw = {}
        s3cfg = {}
        if url.profile is None and opts.endpoint:
            kw["endpoint_url"] = opts.endpoint
            s3cfg["addressing_style"] = "path"     # a non-AWS store rarely serves BUCKET.host names
        if opts.ca_bundle and not session.get_config_variable("ca_bundle"):
            kw["verify"] = opts.ca_bundle
        retries = {"mode": session.get_config_variable("retry_mode") or "standard"}
        if session.get_config_variable("max_attempts") is None:
            retries["max_attempts"] = ATTEMPTS
        if not session.get_config_variable("region"):
            kw["region_name"] = "us-east-1"        # S3's own default; a store that ignores it takes any
        cfg = Config(retries=retries, connect_timeout=connect_timeout, read_timeout=read_timeout,
                     max_pool_connections=pool, s3=s3cfg or None, tcp_keepalive=True,
                     # whole parts are signed and carry a checksum; no "aws-chunked" bodies, which
                     # not every S3-compatible store takes
                     request_checksum_calculation="when_required",
                     response_checksum_validation="when_required")
        return session.create_client("s3", config=cfg, **kw)
    except BotoCoreError as e:
        raise UsageError(f"the S3 configuration cannot be used: {say(e)}") from None


def error_code(e: BaseException) -> str:
    """S3's error code (``NoSuchKey``, ``AccessDenied``, ``403``...), or '' for a client-side error."""
    resp = getattr(e, "response", None)
    if isinstance(resp, dict):
        return str(resp.get("Error", {}).get("Code", "") or resp.get("ResponseMetadata", {})
                   .get("HTTPStatusCode", ""))
    return ""


AUTH_CODES = {"InvalidAccessKeyId": "the store does not know the access key",
              "SignatureDoesNotMatch": "the store refused the signature (a wrong secret key?)",
              "AccessDenied": "access denied", "403": "access denied",
              "ExpiredToken": "the session token has expired", "InvalidToken": "the session token is not valid",
              "AllAccessDisabled": "access to the bucket is disabled"}


def say(e: BaseException) -> str:
    """One line for an S3 or botocore error: S3's code and message, or what failed on the way."""
    import re
    code = error_code(e)
    if code:
        resp = e.response
        msg = " ".join(str(resp.get("Error", {}).get("Message", "") or "").split())
        if code in AUTH_CODES:
            return f"{AUTH_CODES[code]} ({code}{': ' + msg if msg and code != '403' else ''})"
        return f"{code}: {msg}" if msg else code
    url = getattr(e, "kwargs", {}).get("endpoint_url", "") if hasattr(e, "kwargs") else ""
    if url:        # botocore's connection errors name the whole request URL: the store is enough
        m = re.match(r"^(\w+://[^/?]+)", url)
        where = m.group(1) if m else url
        name = type(e).__name__
        if name == "EndpointConnectionError":
            return f"cannot connect to {where}"
        if name == "ConnectTimeoutError":
            return f"connecting to {where} timed out"
        if name == "ReadTimeoutError":
            return f"{where} did not answer in time"
        if name == "SSLError":
            why = str(e).rpartition("SSL validation failed for ")[2]
            return f"TLS to {where} failed: {why.split(' ', 1)[-1] if why else 'certificate not trusted'}"
        return f"{where}: {' '.join(str(e).split())}"
    text = " ".join(str(e).split())
    text = re.sub(r"^\[Errno [^\]]*\] ", "", text)
    return text or type(e).__name__


def is_auth(e: BaseException) -> bool:
    return error_code(e) in AUTH_CODES


def is_gone(e: BaseException) -> bool:
    """The store could not be reached or did not answer (as opposed to an answer that refuses)."""
    try:
        from botocore.exceptions import ConnectionError as BotoConnError, ReadTimeoutError
    except ImportError:
        return False
    return isinstance(e, (BotoConnError, ReadTimeoutError, OSError)) or error_code(e) in (
        "500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout")
