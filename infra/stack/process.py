"""Local processes the supervisor owns: start detached, track by pid file, stop cleanly.

Every component runs in its own session (process group) so that stopping it
also stops anything it forked, and so that a ``payfn up`` that exits does not
take its children with it. The pid file is the only state: ``payfn status`` and
``payfn down`` work from any shell.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now (for tests and private instances)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 20) -> list[str]:
    """The last ``lines`` lines of a log file (empty when there is none)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return list(deque((line.rstrip("\n") for line in handle), maxlen=lines))
    except FileNotFoundError:
        return []


class ManagedProcess:
    """One detached process with a pid file and a log file."""

    def __init__(self, name: str, run_dir: Path, log_dir: Path) -> None:
        self.name = name
        self.pid_file = run_dir / f"{name}.pid"
        self.log_file = log_dir / f"{name}.log"
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The recorded pid if that process is still alive."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def start(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: Path | None = None, niceness: int = 0) -> int:
        """Start the process in a session of its own; ``niceness`` is added to ours.

        The niceness is applied in the child between fork and exec (``os.nice`` only: no
        lock a thread of ours could hold), so it is in place when ``Popen`` returns and
        every process the program starts inherits it; set from here after the fork, a
        child the program started at once could win the race and keep the old niceness.
        """
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
                preexec_fn=(lambda: os.nice(niceness)) if niceness else None,
            )
        self.pid_file.write_text(str(self._popen.pid))
        return self._popen.pid

    def exit_code(self) -> int | None:
        """Exit code if the process this object started has exited (None while running)."""
        if self._popen is None:
            return None
        return self._popen.poll()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> bool:
        """Signal the process group, wait, then SIGKILL; True if it stopped in time."""
        pid = self.pid
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return True
        clean = True
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return self._forget()
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            if self._popen is not None:
                self._popen.poll()
            time.sleep(0.05)
        if pid_alive(pid):
            clean = False
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
        self._forget()
        return clean

    def _forget(self) -> bool:
        """Reap our child (if we started it) and drop the pid file."""
        if self._popen is not None:
            self._popen.poll()
        self.pid_file.unlink(missing_ok=True)
        return True
