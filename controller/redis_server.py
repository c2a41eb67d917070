"""An embedded `redis-server` that the controller starts, owns and stops.

Used when no `--redis URL` is given, and by the test fixtures. Persistence is on
(append-only file plus RDB snapshots) under `data_dir`, so cached answers survive a
controller restart.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from controller.procs import free_port


def _die_with_parent() -> None:
    """Runs in the child before exec: Linux sends it SIGTERM when the controller dies, even by
    SIGKILL, so an embedded Redis is never left orphaned. (Linux ties this to the thread that
    started it: start it from a thread that lives as long as the owner, as the CLI does.)"""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    """A `redis-server` child process on 127.0.0.1 with persistence under `data_dir`."""

    def __init__(self, data_dir: Path, port: int | None = None, binary: str = "redis-server"):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.binary = shutil.which(binary)
        if self.binary is None:
            raise RuntimeError(
                "redis-server not found: install Debian's package (apt-get install redis-server) "
                "or pass --redis URL of a running server"
            )
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _exit_on_sigterm(self) -> list[str]:
        """Redis >= 7.0: exit on SIGTERM even when the final save fails. By default Redis stays up
        if it cannot write its snapshot, and one whose data directory was removed under it (a
        temporary directory cleaned up while it was still shutting down) then never exits."""
        version = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout
        major = re.search(r"v=(\d+)\.", version)
        return ["--shutdown-on-sigterm", "force"] if major and int(major.group(1)) >= 7 else []

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.data_dir),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "60 1",
                "--protected-mode", "yes",
                "--daemonize", "no",
                "--logfile", str(self.data_dir / "redis.log"),
                *self._exit_on_sigterm(),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"redis-server did not start on port {self.port}; "
                        f"see {self.data_dir / 'redis.log'}"
                    ) from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server; SIGTERM makes it flush its append-only file first."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
