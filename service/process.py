"""``metaprune serve`` as a subprocess: how the demo, benchmarks and crash tests run a server.

The server is started with ``--port 0 --port-file F`` (the OS picks a free loopback port and
the server writes it once it listens) in its own session, so the server and its spawned
workers form one process group that :meth:`ServeProcess.kill` can SIGKILL by its id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["ServeProcess", "serve_process"]


class ServeProcess:
    """A ``metaprune serve`` subprocess (its own process group, so it can be killed whole)."""

    def __init__(self, proc: subprocess.Popen, port_file: Path, log: Path) -> None:
        self.proc, self.port_file, self.log = proc, port_file, log
        self.port = 0

    def wait_listening(self, timeout: float = 60.0) -> int:
        """Wait until the server has written its port; return it.

        Raises:
            RuntimeError: the server exited first (the message has the end of its log).
            TimeoutError: it did not listen within ``timeout`` seconds (it is killed).
        """
        deadline = time.monotonic() + timeout
        while not self.port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"metaprune serve exited with {self.proc.returncode}: "
                    f"{self.log.read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"metaprune serve did not listen within {timeout} s")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        return self.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL the server and its workers (the whole process group), by pid."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful stop); returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


def serve_process(
    data_dir: str | os.PathLike[str], config_file: str | os.PathLike[str] | None = None,
    *, timeout: float = 60.0, workers: int = 1, log: str | os.PathLike[str] | None = None,
    wait: bool = True,
) -> ServeProcess:  # fmt: skip
    """Start ``python -m metaprune.cli serve --port 0``; with ``wait``, wait until it listens
    (else call :meth:`ServeProcess.wait_listening` before using :attr:`~ServeProcess.port`)."""
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    port_file = data / "port"
    port_file.unlink(missing_ok=True)
    log_path = Path(log) if log else data / "serve.log"
    cmd = [sys.executable, "-m", "metaprune.cli", "serve", "--host", "127.0.0.1", "--port", "0",
           "--data-dir", str(data), "--workers", str(workers), "--port-file", str(port_file)]  # fmt: skip
    if config_file is not None:
        cmd += ["--config", str(config_file)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = ServeProcess(proc, port_file, log_path)
    if wait:
        server.wait_listening(timeout)
    return server
