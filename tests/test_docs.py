"""The man page and README stay in step with the command line."""

import os
import re
import shlex
import shutil
import subprocess

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


# -- the man page as man renders it (issue 24, item 11) ---------------------------------------------

MAN_PAGE = os.path.join(ROOT, "docs", "stripedump.1")
# the macros that alternate fonts: their arguments are set with no space between them
ALTERNATING = re.compile(r"^\.(BR|RB|BI|IB|IR|RI)\s+(.*)$")


def _roff_plain(text: str) -> str:
    """Roff source as the words a reader sees: font changes and escapes out, quotes of arguments kept."""
    text = re.sub(r"\\f(\[[^\]]*\]|\(..|.)", "", text)
    text = re.sub(r"\\\(..|\\\[[^\]]*\]", " ", text)
    return text.replace("\\-", "-").replace("\\&", "").replace("\\ ", " ").replace("\\e", "\\")


def _macro_args(rest: str) -> list[str]:
    """The arguments of a macro line: words, or "quoted strings" ("" is a quote inside one)."""
    return [q.replace('""', '"') if q or w == "" else w
            for q, w in re.findall(r'"((?:[^"]|"")*)"?|(\S+)', rest)]


def test_man_page_alternating_font_macros_glue_no_words():
    """``.BR a b c`` sets a, b and c with no space between them: words there run together ("default
    1M (4M with -d).Sizestaketheunits K,M,G,T."). Glued pieces must meet at punctuation."""
    bad = []
    for n, line in enumerate(open(MAN_PAGE).read().splitlines(), 1):
        m = ALTERNATING.match(line)
        if not m:
            continue
        args = [_roff_plain(a) for a in _macro_args(m.group(2))]
        for a, b in zip(args, args[1:]):
            if re.search(r"[A-Za-z0-9.;!?)]$", a) and re.match(r"[A-Za-z0-9]", b):
                bad.append(f"line {n}: {line!r} sets {a + b!r}")
    assert not bad, "\n".join(bad)


def _rendered_man() -> str:
    if shutil.which("man") is None:
        pytest.skip("man is not installed (apt-get install man-db)")
    if shutil.which("col") is None:
        pytest.skip("col is not installed (apt-get install bsdextrautils)")
    # as a reader at an 80-column terminal sees it; col -bx: no overstrikes (bold), no tabs
    p = subprocess.run(f"man -l {shlex.quote(MAN_PAGE)} | col -bx", shell=True, capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8"))
    assert p.returncode == 0 and p.stdout.strip(), p.stderr
    return p.stdout


def test_man_page_renders_no_words_run_together():
    """Rendered by man at 80 columns, no line runs words together: no sentence end directly followed
    by a capital, and no run of letters that is not a word of the source but two or more of them."""
    text = _rendered_man()
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 80, max(lines, key=len)
    text = re.sub(r"([A-Za-z])\u2010\n\s*([A-Za-z])", r"\1\2", text)    # words hyphenated at line ends
    glued = [ln.strip() for ln in lines if re.search(r"[a-z0-9)\]]\.[A-Z][a-z]", ln)]
    assert not glued, glued
    words = set(re.findall(r"[A-Za-z]+", _roff_plain(open(MAN_PAGE).read())))

    def split(run: str, parts: int = 0) -> bool:     # two or more source words, end to end
        if not run:
            return parts >= 2
        return any(run[:i] in words and split(run[i:], parts + 1) for i in range(len(run), 0, -1))

    runs = {w for w in re.findall(r"[A-Za-z]+", text) if w not in words}
    assert not {w for w in runs if split(w)}, sorted(runs)


def test_readme_names_the_extra_that_bench_plot_needs():
    """Issue 24 item 13: after the README's `pip install .`, its --plot example failed (no matplotlib);
    wherever the README shows --plot it names the extra that brings matplotlib, and the extra does."""
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert any(re.match(r"matplotlib\b", d) for d in extras["bench"]), extras
    lines = open(os.path.join(ROOT, "README.md")).read().splitlines()
    plots = [i for i, ln in enumerate(lines) if "--plot" in ln]
    assert plots
    for i in plots:
        assert any("pip install '.[bench]'" in ln for ln in lines[max(0, i - 3):i + 4]), lines[i]
    assert "pip install \\(aq.[bench]\\(aq" in open(MAN_PAGE).read()
