"""The command line: one parser builder and one run function per subcommand.

Why thin: everything a command does is a library call (``pipeline.dump``,
``join.join``, ``join.verify``, ``info.info``) that takes a frozen config;
this module only parses, validates user strings once (codec, sizes, disk
lists) and maps errors to exit codes.  Library modules are imported inside
the run functions so ``stripedump --help`` costs little more than starting
Python, which matters on a capture kernel's slow console.

``stripedump --disks A,B SOURCE`` (no subcommand) is ``stripedump dump ...``.
"""

from __future__ import annotations

import argparse
import json
import sys

from .version import __version__
from .errors import ExitCode, StripedumpError, UsageError, WiringError
from .cliargs import (Parser as _Parser, codec as _codec, dump_level as _dump_level, formatter as _formatter,
                      int_list as _int_list, join_codec as _join_codec, known as _known, member as _member,
                      positive_int as _positive_int, seconds as _seconds, size as _size,
                      ssh_read_option as _ssh_read_option, unrecognized as _unrecognized)

EXIT_CODES = """exit codes:
  0    success
  1    internal error (a bug; --debug shows the traceback)
  2    usage error: bad option or value
  3    the source cannot be read or is not an ELF vmcore
  4    a target was refused for safety (--force overrides where allowed), is given
       twice, or another process holds it; nothing was written
  5    a target cannot be created, opened or written before the dump starts (its
       directory missing), or an ssh:// target's host cannot be reached
  6    members are unreadable, malformed or from different dumps (join without
       --allow-incomplete: or missing)
  7    a checksum or decompression check failed
  8    the dump is incomplete (members hold what was written before the failure;
       verify: chunks or members missing)
  9    the join output cannot be written
  10   mount/umount: the mount point is not an empty directory (or not a stripedump
       mount), FUSE is not available, or mounting failed
  11   kdump test: the kdump wiring has problems (one line each); kdump pack: the
       capture initramfs cannot be packed
  12   verify: damage that the readers repair (a member header, manifest, index,
       footer or trailer): join and mount give the whole dump, with a warning
  129  stopped by SIGHUP; 130 by SIGINT; 143 by SIGTERM (a dump finalizes its members first)"""

COMMANDS = ("dump", "join", "info", "verify", "bench", "mount", "umount", "kdump")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; ``only``: that subcommand's parser alone (main, when argv names a
    command: each parser costs its argparse calls and gettext look-ups; issue 12)."""
    p = _Parser(prog="stripedump", formatter_class=_formatter,
                description="Save a Linux crash dump (/proc/vmcore) fast: compressed in parallel "
                            "and striped RAID0-style over several disks; join it back later.",
                epilog="examples:\n"
                       "  stripedump --disks /dev/sdb,/dev/sdc --codec snappy /proc/vmcore\n"
                       "  stripedump join /dev/sdb /dev/sdc -o /var/crash/vmcore\n\n" + EXIT_CODES)
    p.add_argument("--version", action="version", version=f"stripedump {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    # --debug is also accepted after the subcommand (SUPPRESS: a subcommand without it does not
    # reset the value given before it)
    common = argparse.ArgumentParser(add_help=False, formatter_class=_formatter)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks of internal errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, add in (("dump", _add_dump), ("join", _add_join), ("info", _add_info), ("verify", _add_verify),
                      ("mount", _add_mount), ("umount", _add_umount), ("bench", _add_bench),
                      ("kdump", _add_kdump)):
        if only in (None, name):
            add(sub, common)
    return p


def _add_dump(sub, common) -> None:
    d = sub.add_parser("dump", parents=[common], formatter_class=_formatter,
                       help="dump a vmcore over several targets",
                       description="Compress SOURCE in parallel and stripe it over the targets.",
                       epilog="examples:\n"
                              "  stripedump dump --disks /dev/sdb,/dev/sdc /proc/vmcore\n"
                              "  stripedump dump --disks a.sd,b.sd,c.sd --codec zstd:3 --workers 4 vmcore\n"
                              "  stripedump dump --disks m0,m1 --chunk-size 4M --manifest m.json vmcore\n\n"
                              + EXIT_CODES)
    d.add_argument("source", metavar="SOURCE", help="the ELF vmcore, normally /proc/vmcore")
    d.add_argument("--disks", required=True, metavar="T1,T2,...",
                   help="targets: block devices (written from offset 0), files (created), "
                        "ssh://[user@]host[:port]/absolute/path (a member streamed to that host through "
                        "ssh, as ~/.ssh/config says), s3://[PROFILE@]BUCKET/KEY (a member uploaded to "
                        "an S3-compatible store as one object), or - (a member on standard output)")
    d.add_argument("--ssh-option", action="append", default=[], metavar="OPT",
                   help="pass -o OPT to ssh for ssh:// targets (repeatable; e.g. IdentityFile=/root/.ssh/kdump_id, "
                        "UserKnownHostsFile=..., BatchMode=no); these come before stripedump's own "
                        "BatchMode=yes, ConnectTimeout and ServerAliveInterval, so they win")
    _add_s3(d, dump=True)
    d.add_argument("--codec", type=_codec, default=None, metavar="CODEC[:LEVEL]",
                   help="auto (the default) or auto:C+C+...: a codec per chunk, chosen from measured CPU "
                        "and disk rates within the targets' free space (size preferences after it: "
                        "/cost=N%%, /ratio=R); or one codec: none, lz4, snappy, lzo, zlib or zstd, with a "
                        "level for zlib/zstd")
    d.add_argument("--workers", type=_positive_int, default=0, metavar="N",
                   help="compression processes (default: one per usable CPU, at most one per 16 chunks)")
    d.add_argument("--chunk-size", type=_size("--chunk-size"), default=None, metavar="SIZE",
                   help="unit of work and of striping (default 1M; 4M with --dump-level)")
    d.add_argument("--block-size", type=_size("--block-size", positive=True), default=0, metavar="SIZE",
                   help="compression block inside a chunk (default: one page)")
    d.add_argument("--memory-limit", type=_size("--memory-limit"), default=0, metavar="SIZE",
                   help="cap on the shared buffer pool and the s3:// part buffers (default: a quarter "
                        "of available memory)")
    io = d.add_mutually_exclusive_group()
    io.add_argument("--direct-io", dest="direct_io", action="store_const", const=True, default=None,
                    help="require O_DIRECT: a target that refuses it is an error (default: O_DIRECT "
                         "wherever a target accepts it, buffered writes where it does not)")
    io.add_argument("--buffered", dest="direct_io", action="store_const", const=False,
                    help="write every target through the page cache (no O_DIRECT)")
    d.add_argument("--manifest", metavar="PATH", help="also write the manifest as JSON to PATH")
    d.add_argument("--force", action="store_true",
                   help="overwrite targets that are non-empty files or carry a signature")
    d.add_argument("--no-mmap", action="store_true", help="read the source with read() instead of mmap")
    d.add_argument("--on-disk-error", choices=("stop", "continue"), default="stop",
                   help="a target fails (ENOSPC, EIO, short write): stop the dump, exit 8 (default); or "
                        "continue: drop it and stripe over the others (a degraded dump)")
    d.add_argument("--io-timeout", type=_seconds, default=60.0, metavar="SECONDS",
                   help="a target on which no write reaches the device for this long has hung: it "
                        "fails as by --on-disk-error (default 60; progress counts, not call length)")
    d.add_argument("-d", "--dump-level", type=_dump_level, default=0, metavar="N",
                   help="leave pages out as makedumpfile -d N does, N from 0 (all, the default) to 31: "
                        "the sum of 1 zero pages, 2 page cache, 4 page cache with private data, 8 user "
                        "process pages, 16 free pages; decided from VMCOREINFO (what it lacks is not "
                        "applied, with a warning); blocks are then one page")
    d.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    d.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    d.add_argument("-v", "--verbose", action="count", default=0,
                   help="say more: the plan, the buffer pool, each member (-vv: each child process)")


def _add_members(p) -> None:
    """The members of join, info, verify and mount, and how ssh:// ones are reached."""
    p.add_argument("members", nargs="+", type=_member, metavar="MEMBER",
                   help="a member: a file, a block device, ssh://[user@]host[:port]/path or "
                        "s3://[PROFILE@]BUCKET/KEY (not -: a member is read at random)")
    p.add_argument("--ssh-option", action="append", default=[], type=_ssh_read_option, metavar="KEY=VALUE",
                   help="for ssh:// members, as ssh -o over ~/.ssh/config (repeatable): HostName, Port, User, "
                        "IdentityFile, IdentitiesOnly, UserKnownHostsFile, GlobalKnownHostsFile, "
                        "StrictHostKeyChecking, ConnectTimeout, ServerAliveInterval, ServerAliveCountMax, "
                        "ProxyCommand, BatchMode=yes; others are refused")


def _reach(a) -> None:
    """``--ssh-option``s of a reading command, for every ssh:// member it opens (this process and its
    forked readers); sshread is imported only when there are some."""
    if a.ssh_option:
        from .remote.sshread import use_options
        use_options(a.ssh_option)


def _add_s3(p, dump: bool = False) -> None:
    """The S3 options: where s3:// members without a profile of their own are, and (dump) how they
    are uploaded.  Credentials come as for every AWS tool (environment, ~/.aws, profiles)."""
    p.add_argument("--s3-endpoint", metavar="URL",
                   help="the S3 endpoint of s3://BUCKET/KEY members (e.g. http://10.0.0.5:8333 for a "
                        "non-AWS store; default: AWS, or AWS_ENDPOINT_URL_S3 / the profile's "
                        "endpoint_url); s3://PROFILE@BUCKET/KEY uses that profile's own endpoint")
    p.add_argument("--s3-ca-bundle", metavar="FILE",
                   help="CA certificates that sign the store's TLS certificate (TLS is always "
                        "verified; default: the system's, or AWS_CA_BUNDLE / the profile's ca_bundle)")
    if dump:
        p.add_argument("--s3-part-size", type=_size("--s3-part-size", positive=True), default="8M",
                       metavar="SIZE", help="bytes per uploaded part, 5M to 5G (default 8M; raised when a "
                                            "member could need more than 10,000 parts)")
        p.add_argument("--s3-parts-in-flight", type=_positive_int, default=2, metavar="N",
                       help="parts uploading at once per s3:// target (default 2); each target holds "
                            "N + 1 parts in memory, counted in --memory-limit")


def _s3_options(a, dump: bool = False):
    """The S3Options of the command line, or None when no S3 option was given."""
    from .remote.s3url import S3Options
    if dump:
        return S3Options(a.s3_endpoint, a.s3_ca_bundle, a.s3_part_size, a.s3_parts_in_flight)
    if a.s3_endpoint is None and a.s3_ca_bundle is None:
        return None
    return S3Options(a.s3_endpoint, a.s3_ca_bundle)


def _s3_read(a) -> None:
    """A read command's --s3-endpoint / --s3-ca-bundle, for the s3:// members it opens."""
    opts = _s3_options(a)
    if opts is not None:
        from .remote.s3read import configure
        configure(opts)


def _add_join(sub, common) -> None:
    j = sub.add_parser("join", parents=[common], formatter_class=_formatter,
                       help="rebuild the vmcore from the members",
                       description="Rebuild the dump from all members (in any order): the original ELF "
                                   "vmcore byte for byte (default), or makedumpfile's kdump-compressed "
                                   "or flattened format for crash, drgn, libkdumpfile and makedumpfile. "
                                   "Every chunk's checksum is verified.",
                       epilog="examples:\n"
                              "  stripedump join /dev/sdb /dev/sdc -o vmcore\n"
                              "  stripedump join m1 m0 -o vmcore --force --workers 4\n"
                              "  stripedump join m0 m1 --format kdump -o vmcore.kdump\n"
                              "  stripedump join m0 m1 --format flat -o - | ssh host makedumpfile -R "
                              "/var/crash/vmcore\n\n"
                              "kdump and flat pages are compressed with --codec (default: the dump's "
                              "codec when it is zlib, lzo, snappy or zstd, else lzo); pages of a dump "
                              "taken with one-page blocks in that codec are copied without "
                              "recompression; --codec none stores them uncompressed.\n\n" + EXIT_CODES)
    _add_members(j)
    j.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="the file to create; - (standard output) with --format flat")
    j.add_argument("--format", choices=("elf", "kdump", "flat"), default="elf",
                   help="elf: the source ELF vmcore (default); kdump: kdump-compressed; "
                        "flat: kdump-compressed in makedumpfile's flattened format")
    j.add_argument("--codec", type=_join_codec, default=None, metavar="CODEC[:LEVEL]",
                   help="page codec of kdump/flat output: zlib, lzo, snappy or zstd; none stores "
                        "pages uncompressed (what `mount` serves for lz4 and none dumps)")
    j.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    j.add_argument("--allow-incomplete", action="store_true",
                   help="join a dump that did not finish, or without a missing member: recover every "
                        "chunk that reached disk, zeros for the rest; the missing ranges are reported")
    j.add_argument("--workers", type=_positive_int, default=0, metavar="N")
    _add_s3(j)
    j.add_argument("--json", action="store_true",
                   help="print a JSON summary on stdout (on stderr with -o -)")
    j.add_argument("-q", "--quiet", action="store_true")


def _add_info(sub, common) -> None:
    i = sub.add_parser("info", parents=[common], formatter_class=_formatter,
                       help="describe a dump from its members",
                       epilog="examples:\n  stripedump info /dev/sdb /dev/sdc\n"
                              "  stripedump info --json m0 m1\n\n" + EXIT_CODES)
    _add_members(i)
    _add_s3(i)
    i.add_argument("--json", action="store_true")


def _add_verify(sub, common) -> None:
    v = sub.add_parser("verify", parents=[common], formatter_class=_formatter,
                       help="check every checksum and that every chunk decompresses",
                       epilog="examples:\n  stripedump verify /dev/sdb /dev/sdc\n\n" + EXIT_CODES)
    _add_members(v)
    v.add_argument("--workers", type=_positive_int, default=0, metavar="N")
    _add_s3(v)
    v.add_argument("--json", action="store_true")
    v.add_argument("-q", "--quiet", action="store_true")


def _add_bench(sub, common) -> None:
    b = sub.add_parser("bench", parents=[common], formatter_class=_formatter,
                       help="measure MB/s per codec x CPUs x disks on generated data",
                       description="Run the real dump pipeline on a generated vmcore (no RAM of its "
                                   "size needed) and report throughput, ratio, CPU and memory. The "
                                   "members written take up to its size in $TMPDIR or the --disks "
                                   "directories while a run lasts: checked before the first run.",
                       epilog="examples:\n"
                              "  stripedump bench --size 10G\n"
                              "  stripedump bench --size 2G --codecs lz4,zstd --workers 1,2 --disks 1,2 "
                              "--no-write\n"
                              "  stripedump bench --size 4G --data mixed --disks /mnt/a,/mnt/b --json\n"
                              "  stripedump bench --size 1G --plot bench.png\n\n" + EXIT_CODES)
    b.add_argument("--size", type=_size("--size", positive=True), default="1G", metavar="SIZE",
                   help="RAM size of the generated machine (default 1G)")
    b.add_argument("--codecs", default="lz4,snappy,lzo,zlib,zstd,none", metavar="C1,C2,...",
                   help="codecs to run (default lz4,snappy,lzo,zlib,zstd,none); auto runs --codec auto, "
                        "auto:C+C+... auto over those codecs only")
    b.add_argument("--workers", default=None, metavar="N1,N2,...",
                   help="worker counts to try (default: 1 and all usable CPUs)")
    b.add_argument("--disks", default="1", metavar="N1,N2,... | DIR,DIR,...",
                   help="numbers of temporary target files, or one directory per disk (default 1)")
    b.add_argument("--data", default="mixed", choices=("mixed", "random", "zero"),
                   help="mixed (memory-like: zero, text-like, low-entropy and random pages; the "
                        "default), random (incompressible, as in the talk) or zero")
    b.add_argument("--no-write", action="store_true",
                   help="also run each case with writers that discard (CPU bound); same as --mode both")
    b.add_argument("--mode", choices=("write", "no-write", "both"), default=None,
                   help="write to the targets (default), discard (no-write), or both")
    b.add_argument("--chunk-size", type=_size("--chunk-size", positive=True), default="1M", metavar="SIZE")
    b.add_argument("--block-size", type=_size("--block-size", positive=True), default=0, metavar="SIZE")
    b.add_argument("--repeat", type=_positive_int, default=1, metavar="N",
                   help="run each case N times and report the median (default 1)")
    b.add_argument("--dir", metavar="DIR", help="where to put the generated source (default: $TMPDIR)")
    b.add_argument("--json", action="store_true", help='print {"results": [...]} on stdout')
    b.add_argument("--plot", metavar="FILE.png", help="draw throughput per codec, CPUs and disks")
    b.add_argument("-q", "--quiet", action="store_true", help="no per-run lines on stderr")


def _add_mount(sub, common) -> None:
    m = sub.add_parser("mount", parents=[common], formatter_class=_formatter,
                       help="serve the dump as read-only files through FUSE, without a join",
                       description="Mount the dump read-only on MOUNTPOINT (an empty directory): vmcore "
                                   "(the ELF file join writes), vmcore.kdump (kdump-compressed) and "
                                   "dump.json (info --json). Returns once the mount is live; the server "
                                   "runs in the background until 'stripedump umount MOUNTPOINT'.",
                       epilog="examples:\n"
                              "  stripedump mount /dev/sdb /dev/sdc /mnt/dump\n"
                              "  crash /usr/lib/debug/vmlinux /mnt/dump/vmcore\n"
                              "  stripedump umount /mnt/dump\n\n" + EXIT_CODES)
    _add_members(m)
    m.add_argument("mountpoint", metavar="MOUNTPOINT")
    _add_s3(m)
    m.add_argument("--allow-incomplete", action="store_true",
                   help="mount a dump that did not finish, or without a missing member: missing "
                        "chunks read as zeros")
    m.add_argument("--cache", type=_size("--cache"), default="256M", metavar="SIZE",
                   help="decoded chunks kept in memory (default 256M)")
    m.add_argument("--foreground", action="store_true",
                   help="stay attached until unmounted or SIGINT/SIGTERM (debugging, systemd)")
    m.add_argument("--log", metavar="FILE",
                   help="append the server's messages (damaged chunks) to FILE (default: syslog; "
                        "stderr with --foreground)")


def _add_umount(sub, common) -> None:
    u = sub.add_parser("umount", parents=[common], formatter_class=_formatter,
                       help="unmount a stripedump mount (also when its server died)",
                       epilog="examples:\n  stripedump umount /mnt/dump\n\n" + EXIT_CODES)
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.add_argument("-l", "--lazy", action="store_true",
                   help="detach it even while files in it are open (they are served until closed)")


def _add_kdump(sub, common) -> None:
    k = sub.add_parser("kdump", parents=[common], formatter_class=_formatter,
                       help="stripedump in the distribution's kdump service (kdump-tools, dracut, kdump-utils)",
                       description="Check and run stripedump in the kdump capture kernel, as configured in "
                                   "/etc/default/stripedump (docs/kdump.md).",
                       epilog="examples:\n"
                              "  stripedump kdump show          # the wiring, the targets, the last dump\n"
                              "  stripedump kdump test          # one line per problem; exit 11 if any\n"
                              "  # kdump-utils (/etc/kdump.conf): core_collector stripedump kdump collect\n\n"
                              + EXIT_CODES)
    conf = argparse.ArgumentParser(add_help=False)
    conf.add_argument("--config", default=None, metavar="FILE",
                      help="the settings (default /etc/default/stripedump)")
    conf.add_argument("--records", default=None, metavar="DIR",
                      help="where capture runs leave their records (default /var/lib/stripedump/kdump)")
    acts = k.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    for name, text in (("show", "the wiring, the targets and the last dumps"),
                       ("test", "only the problems of the wiring, one line each (exit 11 if any)"),
                       ("report", "journal lines about the dumps the last crash left (run at boot)")):
        acts.add_parser(name, parents=[common, conf], help=text, description=text[0].upper() + text[1:] + ".")
    c = acts.add_parser("capture", parents=[common, conf], formatter_class=_formatter,
                        help="dump /proc/vmcore as configured (kdump-tools' capture unit, the dracut hook); "
                             "reboots after a saved dump")
    c.add_argument("--source", default="/proc/vmcore", metavar="VMCORE", help="the vmcore (default /proc/vmcore)")
    c.add_argument("--initramfs", action="store_true",
                   help="run from a capture initramfs (dracut): a failure leaves the dump to kdump-tools "
                        "on the root filesystem")
    c.add_argument("--no-reboot", action="store_true", help="do not reboot afterwards (tests)")
    o = acts.add_parser("collect", parents=[common, conf], formatter_class=_formatter,
                        help="kdump-utils' core_collector: the dump over the targets, its JSON summary into DEST")
    o.add_argument("src", metavar="SRC")
    o.add_argument("dest", metavar="DEST")
    pk = acts.add_parser("pack", parents=[common], formatter_class=_formatter,
                         help="Python and stripedump into a capture initramfs staging root (dracut's $initdir)")
    pk.add_argument("stage", metavar="STAGE")
    pk.add_argument("--lock", default=None, metavar="FILE",
                    help="the lock file the dependencies must match (default /usr/lib/stripedump/requirements.lock)")
    pk.add_argument("--extra", action="append", default=[], metavar="EXE",
                    help="another executable to pack with its libraries (repeatable)")
    pk.add_argument("--no-strip", action="store_true", help="do not strip the ELF files")


def _normalize(argv: list[str]) -> list[str]:
    """Insert ``dump`` when no subcommand is given (the user's original form)."""
    i = 0
    while i < len(argv) and argv[i] in ("--debug",):
        i += 1
    if i < len(argv) and argv[i] not in COMMANDS and argv[i] not in ("-h", "--help", "--version"):
        import os
        if not argv[i].startswith("-") and not os.path.exists(argv[i]):
            raise UsageError(f"unknown command {argv[i]!r}; choose one of {', '.join(COMMANDS)} "
                             "(see 'stripedump --help')")
        return argv[:i] + ["dump"] + argv[i:]
    return argv


def _disks_first_dash(argv: list[str]) -> list[str]:
    """``--disks -,B``: argparse takes a value that starts with '-' for an option; join it as ``--disks=-,B``."""
    return [f"--disks={argv[i + 1]}" if x == "--disks" and i + 1 < len(argv) and argv[i + 1].startswith("-,")
            else x for i, x in enumerate(argv) if not (i and argv[i - 1] == "--disks" and x.startswith("-,"))]


def _command(argv: list[str]) -> str | None:
    """The subcommand a normalized argv names (None: none, or an option such as --help first)."""
    for x in argv:
        if x != "--debug":
            return x if x in COMMANDS else None
    return None


def _default_codec():
    """auto over the default ladder (issue 12: it met both targets of the recorded benchmark, so it
    is the default); the codecs whose library is missing are left out of the ladder when the dump
    starts (AutoSpec.resolve)."""
    from .format.codecs import AutoSpec
    spec = AutoSpec.parse("auto")
    ok = spec.resolve()
    gone = [str(c) for c in spec.ladder if c not in ok.ladder]
    if gone:
        print(f"stripedump: note: {', '.join(gone)} not installed; auto chooses among "
              f"{', '.join(str(c) for c in ok.ladder)}", file=sys.stderr)
    return ok


def run_dump(a) -> int:
    from .dump.config import DumpConfig
    from .dump.coordinator import dump
    disks = tuple(a.disks.split(","))
    if a.codec is None:
        a.codec = _default_codec()
    from .dump.config import DEFAULT_CHUNK, DUMP_LEVEL_CHUNK
    if a.chunk_size is None:
        a.chunk_size = DUMP_LEVEL_CHUNK if a.dump_level else DEFAULT_CHUNK
    cfg = DumpConfig(a.source, disks, a.codec, a.workers, a.chunk_size, a.block_size, a.force,
                     a.manifest, not a.no_mmap, a.direct_io, a.memory_limit,
                     on_disk_error=a.on_disk_error, io_timeout=a.io_timeout,
                     ssh_options=tuple(a.ssh_option), dump_level=a.dump_level, s3=_s3_options(a, dump=True))
    from .runtime.progress import Output, Progress
    # output is best effort: a closed or full stdout/stderr never changes the dump or its exit code;
    # a member on standard output (--disks -) sends the summary to stderr
    err, out = Output(sys.stderr), Output(sys.stderr if "-" in disks else sys.stdout)
    prog = Progress("dump", stream=err, quiet=a.quiet)
    def say(msg: str, level: int = 1):
        if level <= 0:    # a setting lowered to fit the machine: shown even with -q
            err.print(f"stripedump: warning: {msg}")
        elif a.verbose >= level and not a.quiet:
            err.print(f"stripedump: {msg}")
    try:
        res = dump(cfg, progress=prog, say=say)
    finally:
        prog.close()
    from .dump.result import degraded_warnings
    for line in degraded_warnings(res.extra.get("degraded", []), res.members):
        err.print(f"stripedump: warning: {line}")    # shown even with -q: the dump lost a disk
    if a.json:
        out.print(json.dumps(res.to_json()))
    elif not a.quiet:
        out.print(res.summary())
    return ExitCode.OK


def _fit_workers(a, cmd: str) -> int:
    """``--workers`` of join/verify, lowered to 2 per usable CPU with a warning, as for dump."""
    from .dump.resources import fit_workers
    n, why = fit_workers(a.workers)
    if why:
        print(f"stripedump: {cmd}: warning: {why}", file=sys.stderr)
    return n


def run_join(a) -> int:
    _reach(a)
    from .read.config import JoinConfig
    if a.format == "elf":
        from .read.join import join
    else:
        from .kdump.join import join_kdump as join
    out = sys.stderr if a.output == "-" else sys.stdout   # stdout carries the dump
    _s3_read(a)
    cfg = JoinConfig(tuple(a.members), a.output, a.force, _fit_workers(a, "join"), a.format, a.codec,
                     a.allow_incomplete)
    res = join(cfg, notice=None if a.quiet else
               lambda text: print(f"stripedump: join: {text}", file=sys.stderr))
    from .read.output import describe_missing, describe_unreadable
    warning = describe_unreadable(res.extra.get("unreadable", {}))
    if warning:   # shown even with -q: the output is not the whole of memory
        print(f"stripedump: join: warning: {warning}", file=sys.stderr)
    for line in res.extra.get("repaired", []):     # damage worked around: the output is whole
        print(f"stripedump: join: warning: {line}", file=sys.stderr)
    for e in res.errors[:20]:     # --allow-incomplete: damaged chunks, left as zeros
        print(f"stripedump: join: warning: {e}", file=sys.stderr)
    for line in describe_missing(res.extra):
        print(f"stripedump: join: warning: {line}", file=sys.stderr)
    if res.extra.get("excluded_pages") and not a.quiet:    # a filtered dump: absent, not missing
        lvl = res.extra.get("dump_level")
        print(f"stripedump: join: {res.extra['excluded_pages']} pages left out by the dump level"
              f"{'' if lvl is None else f' ({lvl})'}: absent from the output, not missing", file=sys.stderr)
    if a.json:
        print(json.dumps(res.to_json()), file=out)
    elif not a.quiet and a.format == "elf":
        print(f"joined {res.chunk_words()} into {res.output} ({res.bytes_out / 1e6:.1f} MB), "
              f"{res.seconds:.2f} s, {res.mb_per_s:.1f} MB/s", file=out)
    elif not a.quiet:
        x = res.extra
        mem = x["memory_bytes"]
        where = "standard output" if a.output == "-" else res.output
        print(f"joined {res.chunk_words()} into {where} as {a.format} ({x['codec']}, pages "
              f"{x['pages']}): {mem / 1e6:.1f} MB of memory in {res.bytes_out / 1e6:.1f} MB, "
              f"{res.seconds:.2f} s, {mem / res.seconds / 1e6 if res.seconds else 0:.1f} MB/s", file=out)
    return ExitCode.OK


def run_info(a) -> int:
    _reach(a)
    from .read.info import info, render
    _s3_read(a)
    d = info(list(a.members))
    print(json.dumps(d, indent=1) if a.json else render(d))
    return ExitCode.OK


def run_verify(a) -> int:
    _reach(a)
    from .read.join import verify
    from .read.output import describe_missing, describe_unreadable, verdict
    from .runtime.progress import Progress
    _s3_read(a)
    prog = Progress("verify", quiet=a.quiet)
    try:
        res = verify(list(a.members), _fit_workers(a, "verify"), progress=prog)
    finally:
        prog.close()
    if a.json:
        print(json.dumps(res.to_json()))
    for e in res.errors[:20]:
        print(f"stripedump: verify: {e}", file=sys.stderr)
    for line in res.extra.get("repaired", []):      # damage join and mount work around
        print(f"stripedump: verify: damaged: {line}", file=sys.stderr)
    for line in describe_missing(res.extra, verify=True):
        print(f"stripedump: verify: {line}", file=sys.stderr)
    warning = describe_unreadable(res.extra.get("unreadable", {}))
    if warning:
        print(f"stripedump: verify: note: {warning}", file=sys.stderr)
    err = verdict(res)
    if err is not None:
        raise err
    if not a.json and not a.quiet:
        print(f"verified {res.chunk_words()}, {res.bytes_out / 1e6:.1f} MB of source, of dump "
              f"{res.dump_id}: all checksums good, {res.seconds:.2f} s")
    return ExitCode.OK


def run_bench(a) -> int:
    from .tools.bench import BenchConfig, announce, bench, human, parse_codecs, parse_disks, plot, preflight, table
    from .runtime.machine import usable_cpus
    codecs = parse_codecs(a.codecs)
    workers = _int_list(a.workers, "--workers") if a.workers else tuple(sorted({1, usable_cpus()}))
    counts, dirs = parse_disks(a.disks)
    mode = a.mode or ("both" if a.no_write else "write")
    cfg = BenchConfig(a.size, codecs, workers, counts, dirs, a.data, mode, a.chunk_size,
                      a.block_size, a.dir, a.repeat)

    def report(row):
        if not a.quiet:
            print(f"bench: {row['codec']} workers={row['workers']} disks={row['disks']} "
                  f"{'write' if row['write'] else 'no-write'}: {row['mb_per_s']:.1f} MB/s, "
                  f"ratio {row['ratio']:.2f}, peak {row['peak_memory_bytes'] / 2**20:.1f} MiB",
                  file=sys.stderr, flush=True)
    preflight(cfg, a.plot)          # before any run: matplotlib, the plot's directory, free space
    if not a.quiet:
        print(announce(cfg, usable_cpus()), file=sys.stderr, flush=True)
    rows = bench(cfg, report)
    print(json.dumps({"results": rows}) if a.json else table(rows), flush=True)   # kept if plot fails
    if a.plot:
        plot(rows, a.plot, f"stripedump bench: {human(a.size)} of {a.data} data")
    return ExitCode.OK


def run_mount(a) -> int:
    _reach(a)
    from .mount.lifecycle import mount
    _s3_read(a)
    return mount(list(a.members), a.mountpoint, a.allow_incomplete, a.cache, a.foreground, a.log)


def run_umount(a) -> int:
    from .mount.lifecycle import umount
    return umount(a.mountpoint, a.lazy)


def run_kdump(a) -> int:
    from .service import capture, records, settings, wiring
    if a.action == "pack":
        from .service.pack import DEFAULT_LOCK, pack
        print(json.dumps(pack(a.stage, a.lock or DEFAULT_LOCK, a.extra, not a.no_strip)))
        return ExitCode.OK
    conf = settings.load(a.config or settings.DEFAULT_CONFIG)
    rdir = a.records or (capture.RUN_RECORDS if getattr(a, "initramfs", False) else records.RECORDS_DIR)
    if a.action == "capture":
        return capture.capture(conf, a.source, rdir, not a.no_reboot, "initramfs" if a.initramfs else "kdump-tools")
    if a.action == "collect":
        return capture.collect(conf, a.src, a.dest)
    if a.action == "report":
        capture.report(conf, rdir)
        return ExitCode.OK
    w = wiring.Wiring(conf, records_dir=rdir).check()
    if a.action == "show":
        print(wiring.render(w))
        return ExitCode.OK
    for p in w.problems:
        print(f"problem: {p}")
    if w.problems:
        raise WiringError(f"kdump test: {len(w.problems)} problem(s) in the kdump wiring (above)")
    print("ok: the kdump wiring is complete; a crash will be saved by stripedump")
    return ExitCode.OK


RUNNERS = {"dump": run_dump, "join": run_join, "info": run_info, "verify": run_verify, "bench": run_bench,
           "mount": run_mount, "umount": run_umount, "kdump": run_kdump}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        argv = _disks_first_dash(_normalize(argv))
        parser = build_parser(_command(argv))
        # unknown long options first: argparse would complain of what they made it miss instead
        extra = [x for x in argv[:argv.index("--") if "--" in argv else len(argv)]
                 if x.startswith("--") and len(x) > 2 and not _known(parser, _command(argv), x)]
        if not extra:
            a, extra = parser.parse_known_args(argv)
        if extra:
            raise UsageError(_unrecognized(parser, _command(argv), extra))
        if not a.command:
            build_parser().print_help()
            return ExitCode.USAGE
        return RUNNERS[a.command](a)
    except StripedumpError as e:
        _report(f"stripedump: error: {e}")
        return int(e.exit_code)
    except KeyboardInterrupt:
        _report("stripedump: interrupted")
        return ExitCode.SIGINT
    except BrokenPipeError:
        return ExitCode.OK
    except Exception as e:
        if debug:
            raise
        _report(f"stripedump: internal error: {type(e).__name__}: {e} (run with --debug for a traceback)")
        return ExitCode.INTERNAL


def run() -> int:
    """The console script and ``python -m stripedump``: ``main``, then the objects frozen for exit.

    The interpreter's teardown collects garbage over every object of the
    hundred modules a dump imports: 10-12 ms of a 4 MiB dump (issue 12).
    ``gc.freeze`` leaves them out of it; atexit handlers, the flush of
    sys.stdout and sys.stderr and the module teardown still run, and the
    memory goes back with the process.  Not in ``main``: a library caller's
    process lives on and collects its garbage.
    """
    rc = main()
    import gc
    gc.freeze()
    return rc


def _report(line: str) -> None:
    """The one error line on stderr; a stderr that cannot take it does not change the exit code."""
    from .runtime.progress import Output
    Output(sys.stderr).print(line)
