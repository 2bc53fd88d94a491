"""A passthrough FUSE filesystem that a test turns read-only while it is mounted (D3).

The filesystem runs in a process of its own (never in the test process, which
has live gRPC threads)::

    python -m tests.chaos.readonly_fs BACKING_DIR MOUNTPOINT

and the test drives it through :class:`ReadOnlySwitch` (the ``read_only_switch``
fixture). Every path under MOUNTPOINT is the same path under BACKING_DIR.

Read-only means what a filesystem remounted read-only would say: every
operation that would change a file or the tree (open for writing, create,
write, truncate, fsync, unlink, rename, mkdir, chmod, ...) fails with EROFS,
while reads, stat, directory listings and POSIX locks (left to the kernel) keep
working. Data goes through the page cache (no ``direct_io``), so SQLite can
``mmap`` its ``-shm`` file in WAL mode.

The control channel is the process's stdin and stdout, outside the mount. It
prints ``ready`` once mounted; a line ``ro`` on stdin turns the filesystem
read-only and ``rw`` read-write again, each answered once no write is in
progress any more (so from the answer on, the switch holds for every
operation) with ``mode ro`` / ``mode rw`` and a JSON object: the operations
refused since the previous switch, by name. End of stdin (the test ended, or
died) unmounts lazily and exits. If libfuse cannot mount, the first line is
``mount failed: ...`` and libfuse's own message is on stderr. Not a signal:
libfuse's loop holds the main thread, the only one where Python runs signal
handlers, and libfuse takes SIGINT, SIGTERM and SIGHUP for itself.

``mfusepy`` (ctypes bindings to libfuse 3 or 2) is imported only in that
process: it loads libfuse at import and fails where there is none.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import queue
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from ctypes.util import find_library
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT, python_env

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_CREAT | os.O_APPEND


def _refuse() -> OSError:
    return OSError(errno.EROFS, os.strerror(errno.EROFS))


# --- the filesystem process ---------------------------------------------------------------


class Gate:
    """The read-only switch: writes pass while read-write, and a switch waits for them."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._read_only = False
        self._writing = 0
        self._refused: Counter[str] = Counter()

    @property
    def read_only(self) -> bool:
        return self._read_only

    @contextmanager
    def write(self, op: str) -> Iterator[None]:
        """Run one write-type operation ``op``, or fail it with EROFS while read-only."""
        with self._changed:
            if self._read_only:
                self._refused[op] += 1
                raise _refuse()
            self._writing += 1
        try:
            yield
        finally:
            with self._changed:
                self._writing -= 1
                self._changed.notify_all()

    def set_read_only(self, read_only: bool) -> dict[str, int]:
        """Switch; returns, once no write that passed before the switch is still running,
        the operations refused since the previous switch."""
        with self._changed:
            self._read_only = read_only
            self._changed.wait_for(lambda: self._writing == 0)
            refused, self._refused = dict(self._refused), Counter()
        return refused


class Passthrough:
    """mfusepy operations: each on the same path under ``backing``, writes through ``gate``.

    An operation left out here is not registered with libfuse (its default
    applies: ENOSYS, or the kernel's own POSIX locks); an ``OSError`` raised
    becomes the errno the caller sees.
    """

    use_ns = True
    """Timestamps in nanoseconds (mfusepy's float seconds are deprecated)."""

    def __init__(self, backing: str, gate: Gate) -> None:
        self._backing = backing
        self._gate = gate

    def _path(self, path: str) -> str:
        return os.path.join(self._backing, path.lstrip("/"))

    def init(self, path: str) -> None:
        print("ready", flush=True)

    # -- reads -----------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.fstat(fh) if fh is not None else os.lstat(self._path(path))
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks", "st_ino")
        attrs: dict[str, Any] = {key: getattr(st, key) for key in keys}
        attrs |= {"st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns}
        attrs["st_ctime"] = st.st_ctime_ns
        return attrs

    def access(self, path: str, amode: int) -> int:
        if amode & os.W_OK and self._gate.read_only:
            raise _refuse()
        if not os.access(self._path(path), amode):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return 0

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._path(path))]

    def readlink(self, path: str) -> str:
        return os.readlink(self._path(path))

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._path(path))
        keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree")
        return {key: getattr(sv, key) for key in (*keys, "f_favail", "f_flag", "f_namemax")}

    def open(self, path: str, flags: int) -> int:
        if flags & _WRITE_FLAGS:
            with self._gate.write("open"):
                return os.open(self._path(path), flags)
        return os.open(self._path(path), flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def flush(self, path: str, fh: int) -> int:
        return 0  # every write already reached the backing file

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    # -- writes ----------------------------------------------------------------

    def create(self, path: str, mode: int, flags: int) -> int:
        with self._gate.write("create"):
            return os.open(self._path(path), flags | os.O_CREAT, mode)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self._gate.write("write"):
            return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self._gate.write("truncate"):
            if fh is not None:
                os.ftruncate(fh, length)
            else:
                os.truncate(self._path(path), length)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._gate.write("fsync"):
            if datasync:
                os.fdatasync(fh)
            else:
                os.fsync(fh)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        with self._gate.write("fsyncdir"):
            return 0

    def unlink(self, path: str) -> int:
        with self._gate.write("unlink"):
            os.unlink(self._path(path))
        return 0

    def rename(self, old: str, new: str) -> int:
        with self._gate.write("rename"):
            os.rename(self._path(old), self._path(new))
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        with self._gate.write("mkdir"):
            os.mkdir(self._path(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        with self._gate.write("rmdir"):
            os.rmdir(self._path(path))
        return 0

    def chmod(self, path: str, mode: int) -> int:
        with self._gate.write("chmod"):
            os.chmod(self._path(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        with self._gate.write("chown"):
            os.chown(self._path(path), uid, gid, follow_symlinks=False)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        with self._gate.write("utimens"):
            if times is None:
                os.utime(self._path(path), follow_symlinks=False)
            else:
                os.utime(self._path(path), ns=times, follow_symlinks=False)
        return 0

    def link(self, target: str, source: str) -> int:
        with self._gate.write("link"):
            os.link(self._path(source), self._path(target))
        return 0

    def symlink(self, target: str, source: str) -> int:
        with self._gate.write("symlink"):
            os.symlink(source, self._path(target))
        return 0


def _control(gate: Gate, mountpoint: str) -> None:
    """Serve ``ro`` / ``rw`` lines from stdin; at its end, unmount lazily and exit."""
    for line in sys.stdin:
        mode = line.strip()
        if mode in ("ro", "rw"):
            refused = gate.set_read_only(mode == "ro")
            print(f"mode {mode} {json.dumps(refused)}", flush=True)
    subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)
    os._exit(0)


def main() -> None:
    import mfusepy  # type: ignore[import-untyped]  # noqa: PLC0415  (only here: see the module)

    backing, mountpoint = sys.argv[1:3]
    gate = Gate()
    threading.Thread(target=_control, args=(gate, mountpoint), daemon=True).start()
    try:
        mfusepy.FUSE(Passthrough(os.path.abspath(backing), gate), mountpoint, foreground=True)
    except RuntimeError as exc:  # fuse_main's non-zero return: the mount failed
        print(f"mount failed: fuse_main returned {exc}", flush=True)
        sys.exit(1)


# --- the test's side ----------------------------------------------------------------------


class ReadOnlySwitch:
    """The filesystem process, started on ``backing`` at ``mountpoint``, and its switch.

    :meth:`close` unmounts and ends the process, whatever state either is in.
    """

    def __init__(self, backing: Path, mountpoint: Path, log_path: Path) -> None:
        self.path = mountpoint
        self.log_path = log_path
        # The libfuse `make fuse-lib` installs, where a libfuse 2 is present too
        # (mfusepy would take that one first).
        library = "fuse3" if find_library("fuse3") else "fuse"
        with log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(backing), str(mountpoint)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=python_env(FUSE_LIBRARY_NAME=library),
                cwd=ROOT,
            )
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._read, name="readonly-fs-stdout", daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line.strip())
        self._lines.put("")  # end of output: the process is gone

    def next_line(self, timeout_s: float) -> str:
        """The next line the filesystem process prints ("" once it exited)."""
        try:
            return self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"the FUSE process said nothing for {timeout_s} s") from None

    def read_only(self) -> None:
        """Every write-type operation fails with EROFS from the return on."""
        self._switch("ro")

    def read_write(self) -> dict[str, int]:
        """Writable again from the return on; the operations refused meanwhile, by name."""
        return self._switch("rw")

    def _switch(self, mode: str) -> dict[str, int]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(mode + "\n")
        self._proc.stdin.flush()
        answer = self.next_line(10.0)
        assert answer.startswith(f"mode {mode} "), (answer, self.log_path.read_text())
        refused: dict[str, int] = json.loads(answer.split(" ", 2)[2])
        return refused

    def close(self) -> None:
        # End of stdin makes the process unmount lazily and exit; kill it if it cannot,
        # and unmount here as well (a killed FUSE process leaves a dead mount behind).
        with contextlib.suppress(OSError):
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)


@pytest.fixture(name="read_only_switch")
def read_only_switch_fixture(tmp_path: Path) -> Iterator[ReadOnlySwitch]:
    """A mounted :class:`ReadOnlySwitch`; skipped, with the reason, where FUSE is missing."""
    if not Path("/dev/fuse").exists():
        pytest.skip("D3 read-only needs /dev/fuse (the kernel's fuse module) and there is none")
    if importlib.util.find_spec("mfusepy") is None:
        pytest.skip("D3 read-only needs the mfusepy package (pip install -e '.[dev]')")
    if not (find_library("fuse3") or find_library("fuse")):
        pytest.skip("D3 read-only needs libfuse 3 or 2: `make fuse-lib` installs libfuse3-3 (root)")
    backing, mountpoint = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mountpoint.mkdir()
    fs = ReadOnlySwitch(backing, mountpoint, tmp_path / "readonly-fs.log")
    try:
        first = fs.next_line(20.0)
        if first.startswith("mount failed"):
            log = fs.log_path.read_text().strip()
            pytest.skip(f"D3 read-only: libfuse could not mount ({first}): {log[-300:]}")
        assert first == "ready", f"the FUSE process did not mount:\n{fs.log_path.read_text()}"
        yield fs
    finally:
        fs.close()


if __name__ == "__main__":
    main()
