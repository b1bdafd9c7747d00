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

from . import __version__
from .errors import ExitCode, StripedumpError, UsageError

EXIT_CODES = """exit codes:
  0    success
  1    internal error (a bug; --debug shows the traceback)
  2    usage error: bad option or value
  3    the source cannot be read or is not an ELF vmcore
  4    a target was refused for safety (--force overrides where allowed)
  5    writing a target failed
  6    members are unreadable, from different dumps, missing or malformed
  7    a checksum or decompression check failed
  8    the dump is incomplete (members hold what was written before the failure)
  9    the join output cannot be written
  130  interrupted by SIGINT; 143 by SIGTERM"""

COMMANDS = ("dump", "join", "info", "verify")


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, documented exit code
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=30)


def _size(what):
    def parse(text):
        from .config import parse_size
        try:
            return parse_size(text, what)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _codec(text):
    from .codecs import CodecSpec
    try:
        return CodecSpec.parse(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="stripedump", formatter_class=_formatter,
                description="Save a Linux crash dump (/proc/vmcore) fast: compressed in parallel "
                            "and striped RAID0-style over several disks; join it back later.",
                epilog="examples:\n"
                       "  stripedump --disks /dev/sdb,/dev/sdc --codec snappy /proc/vmcore\n"
                       "  stripedump join /dev/sdb /dev/sdc -o /var/crash/vmcore\n\n" + EXIT_CODES)
    p.add_argument("--version", action="version", version=f"stripedump {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("dump", formatter_class=_formatter, help="dump a vmcore over several targets",
                       description="Compress SOURCE in parallel and stripe it over the targets.",
                       epilog="examples:\n"
                              "  stripedump dump --disks /dev/sdb,/dev/sdc /proc/vmcore\n"
                              "  stripedump dump --disks a.sd,b.sd,c.sd --codec zstd:3 --workers 4 vmcore\n"
                              "  stripedump dump --disks m0,m1 --chunk-size 4M --manifest m.json vmcore\n\n"
                              + EXIT_CODES)
    d.add_argument("source", metavar="SOURCE", help="the ELF vmcore, normally /proc/vmcore")
    d.add_argument("--disks", required=True, metavar="T1,T2,...",
                   help="targets: block devices (written from offset 0) or files (created)")
    d.add_argument("--codec", type=_codec, default="lz4", metavar="CODEC[:LEVEL]",
                   help="none, lz4, snappy, lzo, zlib or zstd, with a level for zlib/zstd (default lz4)")
    d.add_argument("--workers", type=_positive_int, default=0, metavar="N",
                   help="compression processes (default: one per usable CPU)")
    d.add_argument("--chunk-size", type=_size("--chunk-size"), default="1M", metavar="SIZE",
                   help="unit of work and of striping (default 1M)")
    d.add_argument("--block-size", type=_size("--block-size"), default=0, metavar="SIZE",
                   help="compression block inside a chunk (default: one page)")
    d.add_argument("--manifest", metavar="PATH", help="also write the manifest as JSON to PATH")
    d.add_argument("--force", action="store_true",
                   help="overwrite targets that are non-empty files or carry a signature")
    d.add_argument("--no-mmap", action="store_true", help="read the source with read() instead of mmap")
    d.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    d.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")

    j = sub.add_parser("join", formatter_class=_formatter, help="rebuild the vmcore from the members",
                       description="Rebuild the original ELF vmcore, byte for byte, from all members "
                                   "(in any order). Every chunk's checksum is verified.",
                       epilog="examples:\n"
                              "  stripedump join /dev/sdb /dev/sdc -o vmcore\n"
                              "  stripedump join m1 m0 -o vmcore --force --workers 4\n\n" + EXIT_CODES)
    j.add_argument("members", nargs="+", metavar="MEMBER")
    j.add_argument("-o", "--output", required=True, metavar="OUT", help="the file to create")
    j.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    j.add_argument("--workers", type=_positive_int, default=0, metavar="N")
    j.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    j.add_argument("-q", "--quiet", action="store_true")

    i = sub.add_parser("info", formatter_class=_formatter, help="describe a dump from its members",
                       epilog="examples:\n  stripedump info /dev/sdb /dev/sdc\n"
                              "  stripedump info --json m0 m1\n\n" + EXIT_CODES)
    i.add_argument("members", nargs="+", metavar="MEMBER")
    i.add_argument("--json", action="store_true")

    v = sub.add_parser("verify", formatter_class=_formatter,
                       help="check every checksum and that every chunk decompresses",
                       epilog="examples:\n  stripedump verify /dev/sdb /dev/sdc\n\n" + EXIT_CODES)
    v.add_argument("members", nargs="+", metavar="MEMBER")
    v.add_argument("--workers", type=_positive_int, default=0, metavar="N")
    v.add_argument("--json", action="store_true")
    v.add_argument("-q", "--quiet", action="store_true")
    return p


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


def run_dump(a) -> int:
    from .config import DumpConfig
    from .pipeline import dump
    disks = tuple(a.disks.split(","))
    cfg = DumpConfig(a.source, disks, a.codec, a.workers, a.chunk_size, a.block_size, a.force,
                     a.manifest, not a.no_mmap)
    res = dump(cfg)
    if a.json:
        print(json.dumps(res.to_json()))
    elif not a.quiet:
        print(res.summary())
    return ExitCode.OK


def run_join(a) -> int:
    from .config import JoinConfig
    from .join import join
    res = join(JoinConfig(tuple(a.members), a.output, a.force, a.workers))
    if a.json:
        print(json.dumps(res.to_json()))
    elif not a.quiet:
        print(f"joined {res.chunks} chunks into {res.output} ({res.bytes_out / 1e6:.1f} MB), "
              f"{res.seconds:.2f} s, {res.mb_per_s:.1f} MB/s")
    return ExitCode.OK


def run_info(a) -> int:
    from .info import info, render
    d = info(list(a.members))
    print(json.dumps(d, indent=1) if a.json else render(d))
    return ExitCode.OK


def run_verify(a) -> int:
    from .errors import VerifyError
    from .join import verify
    res = verify(list(a.members), a.workers)
    if a.json:
        print(json.dumps(res.to_json()))
    for e in res.errors[:20]:
        print(f"stripedump: verify: {e}", file=sys.stderr)
    if res.errors:
        more = f" ({len(res.errors) - 20} more not shown)" if len(res.errors) > 20 else ""
        raise VerifyError(f"{len(res.errors)} problem(s) found{more}; first: {res.errors[0]}")
    if not a.json and not a.quiet:
        print(f"verified {res.chunks} chunks ({res.bytes_out / 1e6:.1f} MB of source) of dump "
              f"{res.dump_id}: all checksums good, {res.seconds:.2f} s")
    return ExitCode.OK


RUNNERS = {"dump": run_dump, "join": run_join, "info": run_info, "verify": run_verify}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        a = build_parser().parse_args(_normalize(argv))
        if not a.command:
            build_parser().print_help()
            return ExitCode.USAGE
        return RUNNERS[a.command](a)
    except StripedumpError as e:
        print(f"stripedump: error: {e}", file=sys.stderr)
        return int(e.exit_code)
    except KeyboardInterrupt:
        print("stripedump: interrupted", file=sys.stderr)
        return ExitCode.SIGINT
    except BrokenPipeError:
        return ExitCode.OK
    except Exception as e:
        if debug:
            raise
        print(f"stripedump: internal error: {type(e).__name__}: {e} (run with --debug for a traceback)",
              file=sys.stderr)
        return ExitCode.INTERNAL
