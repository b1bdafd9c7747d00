"""The man page and README stay in step with the command line."""

import os
import re

import pytest

from stripedump.cli import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _options(sub):
    p = build_parser()
    action = next(a for a in p._actions if a.dest == "command")
    parser = action.choices[sub]
    return {o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"}


def _man():
    text = open(os.path.join(ROOT, "docs", "stripedump.1")).read()
    return text.replace("\\-", "-")


@pytest.mark.parametrize("sub", ["dump", "bench", "mount", "umount"])
def test_man_page_lists_every_option(sub):
    man = _man()
    missing = [o for o in _options(sub) if o not in man]
    assert missing == []


def test_exit_codes_documented_everywhere():
    from stripedump.errors import ExitCode
    readme = open(os.path.join(ROOT, "README.md")).read()
    man = _man()
    for code in ExitCode:
        assert re.search(rf"^\|\s*[\d, ]*\b{code.value}\b[\d, ]*\|", readme, re.M), code
        assert re.search(rf"^\.BR? (\d+ \"?, \"? )?{code.value}\b", man, re.M) or \
            re.search(rf"^\.BR \d+ \", \" {code.value}$", man, re.M), code
    cli_help = build_parser().format_help()
    for code in ExitCode:
        assert re.search(rf"^\s+{code.value}\b|; {code.value} by", cli_help, re.M), code
