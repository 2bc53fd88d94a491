"""What the kernel says about a process: resident memory and CPU time (Linux /proc)."""

from __future__ import annotations

import os
from pathlib import Path

MIB = 1024 * 1024


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def rss_mib(pid: int) -> float:
    """Resident set size now (VmRSS), in MiB."""
    return _status_kib(pid, "VmRSS") * 1024 / MIB


def peak_rss_mib(pid: int) -> float:
    """Largest resident set size so far (VmHWM), in MiB."""
    return _status_kib(pid, "VmHWM") * 1024 / MIB


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of the process so far, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces: count fields after its closing ")".
    # Fields 14 and 15 (utime, stime) are then at offsets 11 and 12.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
