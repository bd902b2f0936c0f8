"""Local processes the benches and tests start and measure: a free port to
serve on, and what /proc says of a process (its CPU time, its memory, its
children)."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command: state, ppid, pgrp, ... (raises OSError when the process is gone)."""
    # The command, in parentheses, may itself hold spaces and parentheses.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far."""
    ticks = 0
    for pid in pids:
        fields = stat_fields(pid)
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def status_kb(pid: int, name: str) -> int | None:
    """A kB figure of /proc/PID/status (``VmRSS``, ``VmHWM``, ...); None when the line is absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    return None


def children(pid: int) -> list[int]:
    """The direct children of a process (of its main thread)."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
