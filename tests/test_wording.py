"""The words a user reads: unknown options, hints that name the command, counts that agree (issue 24, item 14).

Each was met by a new user: an unknown option sent to ``stripedump --help`` (not the subcommand's),
``--codex lz4 SRC`` said "unrecognized arguments: --codex SRC" (lz4 had been taken as the source),
``mount`` with a member missing advised "join --allow-incomplete", "(1 entries)", a kdump join of an
auto dump said "chunks stored in lzo are copied" (auto never uses lzo), and a kdump join said
"joined 512 chunks" where info and the ELF join said 514.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from conftest import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def auto_dump(tmp_path_factory):
    """A synthetic core dumped with --codec auto (the default) over two members."""
    from stripedump.tools import synth
    d = tmp_path_factory.mktemp("words")
    b = synth.build(str(d / "vmcore"), **synth.layouts()["kernel"])
    members = [str(d / "m0"), str(d / "m1")]
    r = run_cli("dump", "-q", "--chunk-size", "256K", "--disks", ",".join(members), b.path)
    assert r.rc == 0, r
    return b.path, members


@pytest.mark.parametrize("args,command,unknown,near", [
    (["--codex", "lz4", "SRC"], "dump", "--codex", "--codec"),
    (["--disks", "m0", "--codex", "lz4", "SRC"], "dump", "--codex", "--codec"),
    (["dump", "--disks", "m0", "--codex=lz4", "SRC"], "dump", "--codex", "--codec"),
    (["join", "m0", "-o", "out", "--allow-incomplte"], "join", "--allow-incomplte", "--allow-incomplete"),
    (["info", "--jsn", "m0"], "info", "--jsn", "--json"),
    (["verify", "--bogus", "m0"], "verify", "--bogus", None),
    (["bench", "--plt", "x.png"], "bench", "--plt", "--plot"),
    (["mount", "--foregrund", "m0", "mnt"], "mount", "--foregrund", "--foreground"),
])
def test_an_unknown_option_is_named_with_the_subcommands_help(tmp_path, args, command, unknown, near):
    r = run_cli(*args, cwd=tmp_path)
    want = f"unknown option {unknown}" + (f" (did you mean {near}?)" if near else "")
    assert_one_line_error(r, 2, want, f"(see 'stripedump {command} --help')")
    assert "SRC" not in r.err and "lz4" not in r.err and "unrecognized" not in r.err, r.err
    assert os.listdir(tmp_path) == []          # nothing was started


def test_arguments_left_over_are_told_as_the_subcommands(tmp_path):
    r = run_cli("umount", "a", "b", cwd=tmp_path)
    assert_one_line_error(r, 2, "unrecognized arguments: b", "(see 'stripedump umount --help')")


def test_mount_hints_name_mount_and_count_in_words(auto_dump, tmp_path):
    """The checks before anything is mounted (no FUSE needed to reach them)."""
    _, members = auto_dump
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = run_cli("mount", members[0], mnt)
    assert_one_line_error(r, 6, "missing member(s) 1", "--allow-incomplete", "mount go")
    assert "join --allow-incomplete" not in r.err, r.err
    (mnt / "x").write_text("")
    r = run_cli("mount", *members, mnt)
    assert_one_line_error(r, 10, f"mount point {mnt} is not empty (1 entry: x)")


def test_kdump_join_of_an_auto_dump_says_what_is_copied(auto_dump, tmp_path):
    _, members = auto_dump
    r = run_cli("join", "--format", "kdump", *members, "-o", tmp_path / "k")
    assert r.rc == 0, r
    assert "chunks stored in lzo are copied" not in r.err, r.err
    assert "(--codec auto): auto chose among none, lz4, zstd, never lzo: transcoding every page to lzo" in r.err
    r = run_cli("join", "--format", "kdump", "--codec", "zstd", *members, "-o", tmp_path / "z")
    assert r.rc == 0 and "chunks stored in zstd are copied, the others transcoded to zstd" in r.err, r


def _counts(text: str) -> tuple[int, int, int]:
    m = re.search(r"(\d+) chunks \((\d+) of memory pages, (\d+) of the source's headers, notes and padding\)",
                  text)
    assert m, text
    return tuple(map(int, m.groups()))


@pytest.mark.parametrize("level", [0, 31])
def test_every_command_counts_chunks_as_info_does(auto_dump, tmp_path, level):
    """info, verify and an ELF join count every chunk and say how many hold memory pages; a kdump join
    (and an ELF join of a filtered dump) reads only those and names them so."""
    src, members = auto_dump
    if level:
        members = [str(tmp_path / "f0"), str(tmp_path / "f1")]
        assert run_cli("dump", "-q", "-d", "31", "--disks", ",".join(members), src).rc == 0
    total, pages, other = _counts(run_cli("info", *members).out)
    assert total == pages + other and pages > 0 and other > 0
    d = json.loads(run_cli("info", "--json", *members).out)
    assert (d["chunks"], d["page_chunks"]) == (total, pages)
    assert _counts(run_cli("verify", *members).out) == (total, pages, other)
    elf = run_cli("join", *members, "-o", tmp_path / "elf")
    kdump = run_cli("join", "--format", "kdump", *members, "-o", tmp_path / "kdump")
    pages_only = f"joined the dump's {pages} chunks of memory pages (not its {other} of the source's headers"
    assert kdump.out.startswith(pages_only), kdump.out
    if level:
        assert elf.out.startswith(pages_only), elf.out
    else:
        assert elf.out.startswith("joined ") and _counts(elf.out) == (total, pages, other), elf.out
    for fmt in ("elf", "kdump"):
        j = json.loads(run_cli("join", "--json", "--format", fmt, *members, "-o", tmp_path / f"{fmt}.j").out)
        assert (j["dump_chunks"], j["page_chunks"]) == (total, pages)
        assert j["chunks"] == (total if fmt == "elf" and not level else pages)
        assert j.get("page_chunks_only", False) == (fmt == "kdump" or bool(level))
