"""Write synguard(8), the manual page, to stdout: `python3 scripts/manpage.py > synguard.8`.

The synopsis, the commands and every option come from the argparse parser
(synguard.cli.build_parser), so the page cannot fall behind the CLI; the prose an
operator needs beyond --help (what each command is for, files, exit status,
signals, examples) is below. Build time only (debian/rules); not installed.
tests/test_manpage.py checks the page against every `synguard <cmd> --help`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys

from synguard import __version__
from synguard.cli import build_parser

# What each command is for, beyond its one-line help. A command without an entry here
# is still documented (usage, help line, options): the page never omits a command.
DETAILS = {
    "run": """Load the XDP program into the kernel, attach it to every configured interface and stay in
the foreground as the daemon: count SYNs, run the attack detector once per second, and
(in protect mode, or in auto mode while an attack lasts) answer SYNs to the protected ports
with a keyed SYN cookie from XDP so that spoofed SYNs never reach the kernel.
Settings come from the YAML file given with \\fB\\-c\\fR; the flags override it.
At least one interface is needed (\\fB\\-i\\fR or \\fBinterfaces:\\fR in the file).
synguard never replaces an XDP program it does not own: it names it and exits.
Under systemd (\\fBType=notify\\fR) it reports readiness and pings the watchdog.""",
    "detach": """Remove a synguard program that stayed attached after its daemon died (a crash, SIGKILL).
Only synguard's own program is touched (recognised by its pinned id or its name); another
XDP program on the interface is left alone. The unit runs it as \\fBExecStopPost\\fR: with
\\fB\\-\\-service\\-result\\fR naming a failure that systemd restarts, the program is kept so
that protection continues while the daemon restarts.""",
    "check-config": """Parse and validate a configuration file without touching the kernel. Every error is
reported at once, with its key path and line number; exit status 0 means the file is valid.
The unit runs it as \\fBExecStartPre\\fR.""",
    "status": """Ask the running daemon (over its control socket) for its mode, interfaces, counters with
rates, the attack detector's state and the listen queues.""",
    "listeners": """List the listening TCP sockets with their half-open (SYN_RECV) and accept queues, read
from the kernel with sock_diag. No daemon is needed.""",
    "top": """Show the SYN sources the XDP program sampled, heaviest first (one SYN in 16 per CPU is
sampled: counts are estimates).""",
}

DESCRIPTION = """\
.B synguard
defends TCP servers against SYN floods. An XDP program on each protected interface counts
SYNs and, when protection is on, answers every SYN to a protected port with a real SYN\\-ACK
whose sequence number is a keyed cookie (SipHash\\-2\\-4, like the kernel's own SYN cookies),
before the kernel sees the SYN; a tc program checks the cookie in the client's ACK and the
kernel makes the connection, in one round trip and with the client's TCP options. Spoofed
SYNs cost the server one XDP pass and never fill its listen queues. Protection needs Linux 6.9 or later
and \\fBnet.ipv4.tcp_syncookies\\fR not 0.
.PP
The daemon reads its settings from
.IR /etc/synguard/synguard.yaml ,
exports Prometheus metrics, logs one line per event, and answers
.BR "synguard status" " and " "synguard top"
on a control socket.
The modes: \\fBobserve\\fR counts only; \\fBprotect\\fR answers SYNs to the protected
ports with cookies all the time; \\fBauto\\fR protects a port while the detector sees an attack on it.
.PP
The Debian package installs the service disabled: nothing is attached to any interface
until the interfaces are listed in the configuration file and the service is enabled.
"""

FILES = [
    ("/etc/synguard/synguard.yaml",
     "The configuration (a conffile). Every key is shown with its default and a comment; "
     "the shipped file lists no interface."),
    ("/etc/synguard/secret",
     "Optional 128\\-bit master key of the cookies (\\fBsecret.file\\fR), mode 0600; nodes of a fleet "
     "that share it accept each other's cookies."),
    ("/run/synguard/control.sock", "Control socket of the running daemon (\\fBcontrol.socket\\fR)."),
    ("/sys/fs/bpf/synguard/",
     "bpffs pins of the attached program and of the maps a restarted daemon adopts."),
    ("/var/lib/synguard/", "State directory; the compiler and verifier log lands here when the kernel refuses "
     "the program."),
    ("/usr/share/synguard/ebpf/", "The eBPF C sources compiled at start (and compiled objects, if any)."),
    ("/lib/systemd/system/synguard.service", "The systemd unit (installed disabled)."),
    ("/usr/share/doc/synguard/prometheus/", "Prometheus alert rules, their tests and an example scrape config."),
    ("/usr/share/doc/synguard/grafana/synguard.json", "Grafana dashboard."),
]

ENVIRONMENT = [
    ("SYNGUARD_EBPF_DIR", "Directory of the eBPF sources (default: /usr/share/synguard/ebpf). A root-only "
     "knob: refused unless it and every directory above it are root's and closed to group/other writes."),
    ("SYNGUARD_CLANG", "The compiler of the tc program (default: clang from PATH); refused on the same terms."),
    ("SYNGUARD_PIN_DIR", "bpffs directory of the pins (default: /sys/fs/bpf/synguard); trusted only if it is "
     "synguard's own (see Security in the README)."),
    ("SYNGUARD_COOKIE_METHOD", "How SYN cookies are made: auto (default: kfunc when the kernel has "
     "bpf_sk_assign_tcp_reqsk(), Linux >= 6.9, else kernel-cookie), kfunc (refuse to start without it) or "
     "kernel-cookie (the kernel's own cookie from bpf_tcp_gen_syncookie(), MSS only; no tc program)."),
    ("TMPDIR", "Where a compiler or verifier log is written when loading fails (the unit sets /var/lib/synguard)."),
    ("NOTIFY_SOCKET, WATCHDOG_USEC", "Set by systemd: readiness notification and watchdog pings."),
]

EXIT_STATUS = [
    ("0", "Success (for \\fBrun\\fR: stopped by SIGTERM or SIGINT after detaching)."),
    ("1", "An error the operator can fix, explained in one line on standard error: invalid configuration, "
          "daemon not reachable, program refused by the kernel, another XDP program on the interface, "
          "missing privileges or kernel headers."),
    ("2", "Bad command line (unknown option, invalid value), or \\fBrun\\fR without any interface. "
          "The unit does not restart the daemon after status 2 (\\fBRestartPreventExitStatus=2\\fR)."),
]

SIGNALS = [
    ("SIGTERM, SIGINT", "Orderly stop: detach synguard's own program, remove its pins, exit 0."),
    ("SIGHUP", "Reload the configuration file (\\fBsystemctl reload synguard\\fR). A file with errors is "
               "logged, every error with its line, and the running configuration stays."),
    ("SIGKILL, crash", "The program stays attached and keeps protecting; the restarted daemon replaces it in "
                       "one netlink call and adopts the pinned state. Remove it for good with "
                       "\\fBsynguard detach \\-c /etc/synguard/synguard.yaml\\fR."),
]

EXAMPLES = [
    ("Configure, check and start the service:",
     "editor /etc/synguard/synguard.yaml      # interfaces: [eth0], mode, protect.ports\n"
     "synguard check\\-config /etc/synguard/synguard.yaml\n"
     "systemctl enable \\-\\-now synguard\n"
     "journalctl \\-u synguard \\-f"),
    ("Watch it:", "synguard status \\-\\-watch 1\nsynguard top \\-N 20\nsynguard listeners \\-\\-port 443"),
    ("Run in the foreground, protecting ports 80 and 443 on eth0:",
     "synguard run \\-i eth0 \\-\\-mode protect \\-\\-ports 80,443"),
    ("Remove a program left attached by a daemon that was killed:",
     "synguard detach \\-c /etc/synguard/synguard.yaml"),
]

SEE_ALSO = "systemctl(1), journalctl(1), systemd.service(5), ip(8), tc(8), bpftool(8)"


def esc(text: str) -> str:
    """Plain text -> roff: backslashes, hyphens as minus signs, no control character at a line start."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


def subcommands(parser: argparse.ArgumentParser):
    """(name, one-line help, parser) of every subcommand, in the parser's order."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in action._choices_actions}
    return [(name, helps.get(name) or "", sub) for name, sub in action.choices.items()]


def option_term(action: argparse.Action) -> str:
    """'.BR \\-c ", " \\-\\-config " " \\fIFILE\\fR' style term of one option or positional."""
    if not action.option_strings:
        return f".I {esc(action.metavar or action.dest)}"
    names = ", ".join(f"\\fB{esc(s)}\\fR" for s in action.option_strings)
    if action.nargs == 0:
        return names
    if action.choices:
        arg = "{" + ",".join(f"\\fB{esc(str(c))}\\fR" for c in action.choices) + "}"
    else:
        arg = f"\\fI{esc(action.metavar or action.dest.upper())}\\fR"
    return f"{names} {arg}"


def options(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        out += [".TP", option_term(action)]
        text = parser._get_formatter()._expand_help(action) if action.help else ""
        if isinstance(action, argparse._AppendAction) and "repeat" not in text:
            text = f"{text} (repeat for several)".lstrip()
        out.append(esc(text))
    return out


def usage(parser: argparse.ArgumentParser) -> str:
    text = " ".join(parser.format_usage().split())
    return text.removeprefix("usage: ")


def synopsis_block(text: str) -> list[str]:
    """One command's usage as roff: 'synguard run [-h] [-c FILE] ...'."""
    words = text.split(" ")
    return [".B " + " ".join(esc(w) for w in words[:2]), esc(" ".join(words[2:])), ".br"]


def page(parser: argparse.ArgumentParser) -> str:
    date = datetime.datetime.fromtimestamp(int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or
                                           datetime.datetime.now().timestamp(), datetime.timezone.utc)
    cmds = subcommands(parser)
    out = [
        f'.TH SYNGUARD 8 "{date:%Y-%m-%d}" "synguard {esc(__version__)}" "System Administration"',
        ".nh",  # no hyphenation: option names and paths stay whole (copy and paste)
        ".SH NAME",
        "synguard \\- SYN\\-flood defense daemon (XDP SYN cookies) and its control commands",
        ".SH SYNOPSIS",
    ]
    for _, _, sub in cmds:
        out += synopsis_block(usage(sub))
    out += [".B synguard", "\\fB\\-\\-version\\fR | \\fB\\-h\\fR", ".SH DESCRIPTION", DESCRIPTION.rstrip("\n")]
    out += [".SH COMMANDS"]
    for name, help_, sub in cmds:
        out += [f".SS {esc(name)}", esc(help_[:1].upper() + help_[1:]) + ".", ".PP"]
        if name in DETAILS:
            out += [DETAILS[name], ".PP"]
        out += options(sub)
    out += [".SH OPTIONS", ".TP", "\\fB\\-\\-version\\fR", "Print the version and exit.", ".TP",
            "\\fB\\-h\\fR, \\fB\\-\\-help\\fR", "Print a summary of the options (of a command when given after it)."]
    for title, rows in (("FILES", FILES), ("ENVIRONMENT", ENVIRONMENT), ("EXIT STATUS", EXIT_STATUS),
                        ("SIGNALS", SIGNALS)):
        out.append(f".SH {title}")
        for term, text in rows:
            out += [".TP", f"\\fB{esc(term)}\\fR" if title != "FILES" else f".I {esc(term)}", text]
    out.append(".SH EXAMPLES")
    for text, code in EXAMPLES:
        out += [".PP", text, ".PP", ".nf", ".RS 4", code, ".RE", ".fi"]
    out += [".SH SEE ALSO", SEE_ALSO, ""]
    return "\n".join(out)


def main() -> int:
    sys.stdout.write(page(build_parser()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
