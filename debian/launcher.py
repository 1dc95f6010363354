#!/usr/bin/python3 -I
"""/usr/sbin/synguard: the Debian package's entry point (synguard(8)).

synguard is an application, not a library: its modules live in a private
directory, /usr/share/synguard (Debian Python Policy), beside the kernel sources
it compiles (/usr/share/synguard/ebpf). Nothing else imports them, and a
developer's editable checkout of synguard is never shadowed by this package.
-I: a root daemon ignores PYTHON* variables and the user's site directory.
"""
import sys

sys.path.insert(0, "/usr/share/synguard")

from synguard.cli import main  # noqa: E402

sys.exit(main())
