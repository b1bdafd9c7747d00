"""What one argument of the command line may be, checked once at the edge, and how a bad one is told.

Why a module of its own: cli.py builds the parsers and runs the commands; the
value types every parser shares (sizes, codecs, dump levels, seconds,
members, ssh options of the reading commands) turn a user's string into a
checked value or a one-line usage error (style convention 3), and the parser
class and the wording of unknown options make every usage error one line
that names the subcommand's own help, with the closest option it has
(issue 24).  Library modules are imported inside the types, as in cli.py, so
``stripedump --help`` stays cheap.
"""

from __future__ import annotations

import argparse
import sys

from .errors import UsageError


class Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, documented exit code
        raise UsageError(f"{message} (see '{self.prog} --help')")


def formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=30, width=columns() - 2)


def columns() -> int:
    """shutil.get_terminal_size().columns, which argparse asks for when given no width, without
    importing shutil (it imports bz2 and lzma: 3 ms of every run's fixed cost, issue 12)."""
    import os
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


def size(what, positive=False):
    """A size like ``4M``; ``positive``: 0 is refused (a size the user gives must be one)."""
    def parse(text):
        from .runtime.units import parse_size
        try:
            v = parse_size(text, what)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if positive and v == 0:
            raise argparse.ArgumentTypeError(f"{what} must be more than 0 (got {text!r})")
        return v
    return parse


def codec(text):
    from .format.codecs import parse_codec
    try:
        return parse_codec(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def join_codec(text):
    """A kdump/flat page codec: those kdump has a flag for, or none (pages stored uncompressed)."""
    from .format.codecs import BY_NAME
    kdump = [n for n, c in BY_NAME.items() if c.kdump_flag is not None] + ["none"]
    name = text.strip().lower().partition(":")[0]
    if name not in kdump:
        why = "kdump has no flag for it" if name in BY_NAME else "unknown codec"
        raise argparse.ArgumentTypeError(f"{text!r} cannot compress kdump or flat pages ({why}); "
                                         f"choose one of {', '.join(kdump)}")
    return codec(text)


def _number(text: str, cast, noun: str, ok, must: str):
    """``cast(text)`` where ``ok`` of it, else "not NOUN" or "must be MUST" as a usage error."""
    try:
        v = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"must be {must}: {text!r}")
    return v


def positive_int(text):
    return _number(text, int, "an integer", lambda v: v >= 1, "at least 1")


def dump_level(text):
    from .dump.config import MAX_DUMP_LEVEL
    return _number(text, int, "an integer", lambda v: 0 <= v <= MAX_DUMP_LEVEL,
                   f"from 0 to {MAX_DUMP_LEVEL} (a sum of 1, 2, 4, 8, 16)")


def seconds(text):
    return _number(text, float, "a number of seconds", lambda v: 0 < v < float("inf"),
                   "a positive number of seconds")


def member(text: str) -> str:
    """A member to read: a file, a block device or ssh://...; never - (standard input)."""
    if text == "-":
        from .read.member import NOT_A_STREAM
        raise argparse.ArgumentTypeError(f"- (standard input) cannot be a member: {NOT_A_STREAM}")
    return text


def ssh_read_option(text: str):
    """One --ssh-option of join, info, verify or mount (remote/sshread.py says which it applies)."""
    from .remote.sshread import parse_option
    try:
        return parse_option(text)
    except UsageError as e:      # argparse names the option itself
        raise argparse.ArgumentTypeError(str(e).removeprefix("--ssh-option ")) from None


def subparser(parser, command: str | None):
    if command:
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return parser


def known(parser, command: str | None, arg: str) -> bool:
    """``--name`` or ``--name=value`` is an option of the command, or an abbreviation of one only."""
    name = arg.partition("=")[0]
    known = [o for a in subparser(parser, command)._actions for o in a.option_strings]
    return name in known or len([o for o in known if o.startswith(name)]) == 1


def unrecognized(parser, command: str | None, extra: list[str]) -> str:
    """Arguments the command does not take, told as that command's (argparse says them at the top
    level, with the value an unknown option took from its neighbour: ``--codex lz4 SRC`` gave
    "unrecognized arguments: --codex SRC"): the unknown options, each with the closest known one."""
    import difflib
    parser = subparser(parser, command)
    options = [x.partition("=")[0] for x in extra if x.startswith("-") and x != "-"]
    if not options:
        return f"unrecognized arguments: {' '.join(extra)} (see '{parser.prog} --help')"
    known = [o for a in parser._actions for o in a.option_strings]
    said = []
    for o in options:
        near = difflib.get_close_matches(o, known, n=1, cutoff=0.75)
        said.append(o + (f" (did you mean {near[0]}?)" if near else ""))
    return f"unknown option{'s' if len(said) > 1 else ''} {', '.join(said)} (see '{parser.prog} --help')"


def int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x)
    except ValueError:
        raise UsageError(f"{what} takes numbers separated by commas (got {text!r})") from None
    if not vals or min(vals) < 1:
        raise UsageError(f"{what} values must be at least 1 (got {text!r})")
    return vals
