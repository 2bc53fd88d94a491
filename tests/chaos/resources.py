"""Open file descriptors and resident memory of a process, from /proc (I6)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Usage:
    """A process's open fds and RSS at one moment."""

    fds: int
    rss_kib: int

    def __str__(self) -> str:
        return f"{self.fds} fds, {self.rss_kib / 1024:.1f} MiB RSS"


def usage(pid: int) -> Usage:
    """Open fds and VmRSS of ``pid`` now."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return Usage(fds, rss)


def within(now: Usage, baseline: Usage, fraction: float, slack_fds: int, slack_kib: int) -> bool:
    """True if ``now`` is back within ``fraction`` of ``baseline`` (plus absolute slack).

    The slack is for a small process, where 10 % of a few dozen fds is not
    even one fd, and for memory the allocator keeps after a burst of work.
    """
    fds_ok = now.fds <= baseline.fds * (1 + fraction) + slack_fds
    rss_ok = now.rss_kib <= baseline.rss_kib * (1 + fraction) + slack_kib
    return fds_ok and rss_ok


def tcp_peers(pid: int) -> set[int]:
    """Remote ports of the TCP connections ``pid`` holds open (IPv4 and IPv6 loopback)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    peers = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                peers.add(int(fields[2].rsplit(":", 1)[1], 16))
    return peers
