"""Write synguard's bash completion to stdout: `python3 scripts/completion.py > synguard`.

Generated from the argparse parser (synguard.cli.build_parser) like the manual page,
so every subcommand, option and choice list follows the CLI. Self-contained: it needs
no bash-completion helper functions. Build time only (debian/rules).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from synguard.cli import build_parser

# Values completed from the system rather than a fixed list, by metavar.
DYNAMIC = {
    "IFACE": "$(ls /sys/class/net 2>/dev/null)",
}
FILE_METAVARS = {"FILE", "PATH", "SOCKET", "file"}


def visible(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if a.help != argparse.SUPPRESS]


def script(parser: argparse.ArgumentParser) -> str:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    top_opts = [s for a in visible(parser) if not isinstance(a, argparse._SubParsersAction) for s in a.option_strings]
    cases = []
    for name, p in sub.choices.items():
        opts = [s for a in visible(p) for s in a.option_strings]
        values = []  # case arms: option -> its values
        for a in visible(p):
            if not a.option_strings or a.nargs == 0:
                continue
            pat = "|".join(a.option_strings)
            if a.choices:
                values.append(f'            {pat}) COMPREPLY=($(compgen -W {shlex.quote(" ".join(map(str, a.choices)))} '
                              f'-- "$cur")); return ;;')
            elif a.metavar in DYNAMIC:
                values.append(f'            {pat}) COMPREPLY=($(compgen -W "{DYNAMIC[a.metavar]}" -- "$cur")); return ;;')
            elif a.metavar in FILE_METAVARS:
                values.append(f'            {pat}) COMPREPLY=($(compgen -f -- "$cur")); return ;;')
            else:
                values.append(f"            {pat}) return ;;")  # a free value: nothing to offer
        positional = any(not a.option_strings for a in visible(p))
        rest = ('            if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W {o} -- "$cur")); '
                'else COMPREPLY=($(compgen -f -- "$cur")); fi' if positional else
                '            COMPREPLY=($(compgen -W {o} -- "$cur"))').format(o=shlex.quote(" ".join(opts)))
        cases.append("\n".join([
            f"        {name})",
            '            case "$prev" in',
            *values,
            "            esac",
            rest,
            "            ;;",
        ]))
    commands = " ".join(sub.choices)
    return f"""# bash completion for synguard(8); generated from its argparse parser by scripts/completion.py.
_synguard() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" cmd="" i
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            -*) ;;
            *) cmd="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    if [[ -z "$cmd" ]]; then
        COMPREPLY=($(compgen -W {shlex.quote(commands + " " + " ".join(top_opts))} -- "$cur"))
        return
    fi
    case "$cmd" in
{chr(10).join(cases)}
    esac
}}
complete -F _synguard synguard
"""


def main() -> int:
    sys.stdout.write(script(build_parser()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
