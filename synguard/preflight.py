"""What can be checked before the program is compiled: the secret file, the
interfaces, the control socket's path. `check-config` (the unit's ExecStartPre)
and `synguard run` both ask here, so a start that must fail fails in well under
a second, before it compiles anything or touches the pins a crashed run left."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from synguard import config as configmod


def host_problems(cfg: configmod.Config, starting: bool = False) -> list[str]:
    """One line per problem (empty: nothing found). starting (`synguard run`): also
    refuse when another daemon answers on the control socket, before this one copies
    and re-pins the kept maps that daemon is still writing."""
    problems = []
    if cfg.secret.file:
        from synguard.secret import secret_file_check

        try:
            secret_file_check(cfg.secret.file)
        except configmod.ConfigError as e:
            problems += [f"secret.file ({cfg.secret.file}): {line}" for line in e.errors]
    for ifname in cfg.interfaces:
        try:
            socket.if_nametoindex(ifname)
        except OSError:
            problems.append(f"interfaces: {ifname!r} does not exist (in this network namespace)")
    problem = control_socket_problem(cfg.control.socket)
    if problem:
        problems.append(problem)
    elif starting and _answers(cfg.control.socket):
        problems.append(f"another synguard is running (control socket {cfg.control.socket} answers)")
    return problems


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def control_socket_problem(path: str) -> str | None:
    """Why a control socket cannot be made at path, or None (a missing parent is made at start)."""
    p = Path(path)
    try:
        st = p.lstat()
    except (FileNotFoundError, NotADirectoryError):
        st = None  # the walk up below says which part is wrong
    except OSError as e:
        return f"control.socket: {p}: {e.strerror}"
    if st is not None and not stat.S_ISSOCK(st.st_mode):
        return f"control.socket: {p} exists and is not a socket; synguard will not touch it (choose another path)"
    ancestor = p.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"control.socket: {p}: {ancestor} is not a directory"
    return None
