"""Processes: whether a pid is alive, and which process owns a record.

An owner is ``host:pid:start`` where ``start`` is the process's start time in clock ticks since boot
(Linux ``/proc/PID/stat``), so that a pid the system gave to another process since is not taken for the
owner."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_ticks(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # the command name (field 2) is in parentheses and may hold spaces: count fields after its end
    return stat[stat.rindex(")") + 2:].split()[19]


def this_process() -> str:
    """The owner string of this process."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def owner_gone(owner: str) -> bool | None:
    """True when ``owner`` is a process of this host that is no longer running, False when it runs,
    None when that cannot be told here (another host, no owner recorded)."""
    host, _, rest = (owner or "").partition(":")
    pid_text, _, ticks = rest.partition(":")
    if not host or host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if not pid_alive(pid):
        return True
    return bool(ticks) and _start_ticks(pid) not in ("", ticks)
