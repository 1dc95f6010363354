"""synguard(8) and the bash completion follow the CLI: every command and every option
that `synguard <cmd> --help` prints is in the rendered manual page and is completed;
every option the page's prose and examples name exists. Both files are generated at
package build time by scripts/manpage.py and scripts/completion.py (checked here on
this checkout; tests/test_deb.py checks the installed page renders)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "MANWIDTH": "200", "MANPAGER": "cat"}
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def synguard_help(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "synguard.cli", *args, "--help"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stdout


def commands() -> list[str]:
    section = synguard_help().split("COMMAND\n", 2)[-1].split("\noptions:")[0]
    return re.findall(r"^    ([a-z][a-z-]*)", section, re.M)


def help_options(cmd: str) -> set[str]:
    """Option strings of a command, as its --help lists them (the options section)."""
    text = synguard_help(cmd).split("\noptions:\n", 1)[1]
    return {m for line in text.splitlines() if line.startswith("  -")
            for m in OPTION.findall(line.split("  ", 2)[1] if "  " in line.strip() else line)}


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> str:
    roff = tmp_path_factory.mktemp("man") / "synguard.8"
    r = subprocess.run([sys.executable, str(ROOT / "scripts/manpage.py")], capture_output=True, text=True,
                       timeout=60, env=ENV)
    assert r.returncode == 0, r.stderr
    roff.write_text(r.stdout)
    r = subprocess.run(["man", "--warnings", "-l", str(roff)], capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr  # groff warnings are roff mistakes
    return re.sub(r"(?<=\S) {2,}", " ", r.stdout)  # justified text: one space between words


@pytest.fixture(scope="module")
def completion(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "synguard"
    r = subprocess.run([sys.executable, str(ROOT / "scripts/completion.py")], capture_output=True, text=True,
                       timeout=60, env=ENV)
    assert r.returncode == 0, r.stderr
    path.write_text(r.stdout)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    return path


def complete(script: Path, *words: str) -> list[str]:
    """What bash offers after `synguard <words>` (the last word is the one being typed)."""
    words_q = " ".join(f"'{w}'" for w in ("synguard", *words))
    code = (f"source {script}; COMP_WORDS=({words_q}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); _synguard; "
            "printf '%s\\n' \"${COMPREPLY[@]}\"")
    r = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_help_options_are_found():
    """The --help parser of these tests sees what argparse prints (guards the tests below)."""
    assert {"run", "detach", "check-config", "status", "listeners", "top"} <= set(commands())
    assert {"-c", "--config", "-i", "--interface", "--mode", "--xdp-mode", "--interval"} <= help_options("run")
    assert "--ebpf" not in help_options("run")  # hidden


def test_every_command_and_option_is_in_the_manual_page(page):
    sections = re.split(r"^ {3}(\S+)\n", page.split("\nCOMMANDS\n", 1)[1].split("\nOPTIONS\n", 1)[0], flags=re.M)
    documented = dict(zip(sections[1::2], sections[2::2]))
    for cmd in commands():
        assert cmd in documented, f"command {cmd} has no section in synguard(8)"
        assert f"synguard {cmd}" in page.split("\nDESCRIPTION\n", 1)[0], f"{cmd} not in the SYNOPSIS"
        # -h/--help: once, under OPTIONS (checked below), not in every command's section.
        missing = [o for o in help_options(cmd) - {"-h", "--help"} if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])",
                                                                    documented[cmd])]
        assert not missing, f"synguard {cmd}: {missing} not in its synguard(8) section"
    options = page.split("\nOPTIONS\n", 1)[1].split("\nFILES\n", 1)[0]
    assert all(o in options for o in ("--version", "-h, --help")), options
    for section in ("SYNOPSIS", "DESCRIPTION", "FILES", "EXIT STATUS", "SIGNALS", "EXAMPLES", "SEE ALSO"):
        assert f"\n{section}\n" in page, section


def test_options_named_in_the_prose_exist(page):
    """Prose and examples name real options: `synguard <cmd> ... --opt` lines, and each
    command's own section."""
    real = {cmd: help_options(cmd) | {"-h", "--help"} for cmd in commands()}
    for line in page.splitlines():
        m = re.search(r"\bsynguard ([a-z][a-z-]*)\b(.*)", line)
        if m and m.group(1) in real:
            unknown = set(OPTION.findall(m.group(2))) - real[m.group(1)]
            assert not unknown, f"{line.strip()!r}: {unknown} are not options of synguard {m.group(1)}"


def test_every_command_and_option_is_completed(completion):
    assert set(complete(completion, "")) >= set(commands()) | {"--version", "--help"}
    for cmd in commands():
        offered = set(complete(completion, cmd, "-"))
        assert help_options(cmd) <= offered, (cmd, help_options(cmd) - offered)
    assert complete(completion, "run", "--mode", "") == ["observe", "protect", "auto"]
    assert complete(completion, "run", "--xdp-mode", "n") == ["native"]
    assert "lo" in complete(completion, "run", "-i", "")
    assert complete(completion, "check-config", str(ROOT / "config" / "synguard.y")) == [
        str(ROOT / "config" / "synguard.yaml")]


# --- the README's "Supported kernels" table and the kernel matrix ------------------------------

def _matrix_kernels() -> list[str]:
    """KERNELS ?= ... of the Makefile: what `make test-kernels` (and so .ci/run) runs."""
    m = re.search(r"^KERNELS \?= (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, "Makefile has no KERNELS ?= line"
    return m.group(1).split()


def test_supported_kernels_table_is_the_matrix():
    """Every kernel the matrix runs has a row and every row is run by the matrix; methods
    are the daemon's labels; a method keeps the same options on every kernel (the options
    are the method's, the matrix measures them per kernel against this table); the kfunc
    method keeps every option; .ci/run runs the matrix."""
    from synguard.abi import CookieMethod
    from synguard_lab import kernelmatrix as km

    rows = km.supported_kernels((ROOT / "README.md").read_text())
    assert [km.kernel_of(r) for r in rows] == _matrix_kernels()
    by_method: dict[str, set[int]] = {}
    for r in rows:
        kver = km.kernel_of(r)
        assert kver == "host" or re.fullmatch(r"\d+\.\d+\.\d+(-\d+|\+deb\d+)-amd64", kver), kver
        assert km.method_of(r) in CookieMethod.labels(), r
        by_method.setdefault(km.method_of(r), set()).add(km.options_bits(r["options a client keeps"]))
        assert "make test-kernels" in r["tested by"], r
        assert ("no guest" in r["tested by"]) == (kver == "host"), r
    assert all(len(v) == 1 for v in by_method.values()), by_method
    assert by_method.get("kfunc", {sum(km.OPTION_BITS.values())}) == {sum(km.OPTION_BITS.values())}
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test-kernels" in ci and ci.index("make test-kernels") > ci.index("make test")


def test_options_cell_parser_refuses_unknown_words():
    """The table check above cannot pass on a typo: an unknown option word is an error."""
    from synguard_lab import kernelmatrix as km

    assert km.options_bits("MSS") == 0
    assert km.options_bits("MSS, timestamps, SACK, window scaling") == 7
    assert km.options_bits_ts2("MSS; with `tcp_timestamps=2`: MSS, SACK (clients that send timestamps)") == 2
    assert km.options_bits_ts2("MSS, SACK") == 2
    with pytest.raises(ValueError):
        km.options_bits("MSS, timestamp")
