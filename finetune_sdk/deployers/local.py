"""Serve an artifact from a local HTTP server process (``python -m finetune_sdk.serve``) on 127.0.0.1.

The server is a child process so a crash or a long generation never takes the caller down with it,
and so it is the exact program a container runs. The returned Predictor owns the process: closing it
stops the server, and so does garbage collection or the end of the Python process if it is never closed.
The child answers ``/ping`` with a random id it was given, so readiness is never confused with another
server already listening on the port.
"""

from __future__ import annotations

import importlib.util
import errno
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import httpx

from ..artifact import Artifact
from ..errors import EndpointError, MissingDependencyError, PortInUseError
from ..predict import Predictor
from ..predict.http import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, HttpTransport
from ..serve.__main__ import API_KEY_ENV, SERVER_ID_ENV
from ..serve.schema import SERVER_ID_HEADER

HOST = "127.0.0.1"
STOP_GRACE_SECONDS = 10.0


class LocalServerDeployer:
    """Starts one server process per ``deploy`` call."""

    def deploy(self, artifact: Artifact | str | Path, *, port: int | None = None, api_key: str | None = None,
               startup_timeout: float = 120.0, device: str = "auto", timeout: float = DEFAULT_TIMEOUT,
               max_retries: int = DEFAULT_MAX_RETRIES) -> Predictor:
        missing = [m for m in ("fastapi", "uvicorn", "torch") if importlib.util.find_spec(m) is None]
        if missing:
            raise MissingDependencyError(f"the local server needs {missing}; install them with: "
                                         "pip install 'finetune-sdk[train,serve]'")
        path = Path(getattr(artifact, "path", artifact))
        server = LocalServer.start(path, port=port or free_port(), api_key=api_key, device=device,
                                   startup_timeout=startup_timeout)
        return Predictor(LocalServerTransport(server, api_key=api_key, timeout=timeout, max_retries=max_retries))


class LocalServer:
    """A running server process and the log file that holds its output; stopped by ``stop``, or when it is
    garbage collected or the Python process exits."""

    def __init__(self, process: subprocess.Popen, url: str, log_path: Path, server_id: str = "") -> None:
        self.process = process
        self.url = url
        self.log_path = log_path
        self.server_id = server_id
        self._stop = weakref.finalize(self, _stop, process, log_path)

    @classmethod
    def start(cls, artifact: Path, *, port: int, api_key: str | None, device: str,
              startup_timeout: float) -> "LocalServer":
        if port_in_use(port):
            raise _port_in_use_error(port)
        server_id = secrets.token_hex(16)
        env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
        env[SERVER_ID_ENV] = server_id
        if api_key:
            env[API_KEY_ENV] = api_key  # not on the command line, where `ps` would show it
        command = [sys.executable, "-m", "finetune_sdk.serve", str(artifact), "--host", HOST, "--port", str(port),
                   "--device", device, "--log-level", "warning", "--stop-with-stdin"]
        with tempfile.NamedTemporaryFile(prefix="finetune-sdk-serve-", suffix=".log", delete=False) as log:
            try:
                process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                           env=env)  # the pipe closes when this process ends: the server stops
            except BaseException:
                Path(log.name).unlink(missing_ok=True)
                raise
        server = cls(process, f"http://{HOST}:{port}", Path(log.name), server_id)
        try:
            server.wait_until_ready(startup_timeout)
        except BaseException:  # a failed start, or Ctrl-C while the model loads: never leave the child behind
            server.stop()
            raise
        return server

    def wait_until_ready(self, timeout: float) -> None:
        """Poll /ping until our child answers it; fail with the server's own output if it dies or stalls, and
        with PortInUseError if another server answers on the port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                if port_in_use(self.port):
                    raise _port_in_use_error(self.port, tail)
                raise EndpointError(f"the local server exited with code {self.process.returncode} before it was "
                                    f"ready; its output ends with:\n{tail}")
            try:
                response = httpx.get(f"{self.url}/ping", timeout=1.0)
            except httpx.TransportError:
                response = None
            if response is not None:
                if response.headers.get(SERVER_ID_HEADER) != self.server_id:
                    raise _port_in_use_error(self.port)
                if response.status_code == 200:
                    return
            time.sleep(0.2)
        raise EndpointError(f"the local server was not ready within {timeout:.0f}s; raise startup_timeout= for "
                            f"big models. Its output ends with:\n{self.log_tail()}")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        """Terminate, then kill if it has not exited after STOP_GRACE_SECONDS; remove the log."""
        self._stop()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no output)"


def _stop(process: subprocess.Popen, log_path: Path) -> None:
    """LocalServer.stop, kept apart from the object so its finalizer does not keep it alive."""
    if process.stdin is not None:
        process.stdin.close()
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    log_path.unlink(missing_ok=True)


class LocalServerTransport(HttpTransport):
    """The HTTP transport for a server this process started; ``close`` also stops the server."""

    def __init__(self, server: LocalServer, **options: Any) -> None:
        super().__init__(server.url, **options)
        self.server = server

    def close(self) -> None:
        super().close()
        self.server.stop()


def port_in_use(port: int) -> bool:
    """Whether something listens on ``port`` of 127.0.0.1 (a bind fails as the server's own bind would)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: old connections do not count
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def _port_in_use_error(port: int, output: str = "") -> PortInUseError:
    tail = f"; the server's output ends with:\n{output}" if output else ""
    return PortInUseError(f"port {port} on {HOST} is already in use by another process; pass another port=, or "
                          f"none to use a free one{tail}")


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]
