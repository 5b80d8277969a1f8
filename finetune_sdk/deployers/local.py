"""Serve an artifact from a local HTTP server process (``python -m finetune_sdk.serve``) on 127.0.0.1.

The server is a child process so a crash or a long generation never takes the caller down with it,
and so it is the exact program a container runs. The returned Predictor owns the process: closing it
stops the server.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from ..artifact import Artifact
from ..errors import EndpointError, MissingDependencyError
from ..predict import Predictor
from ..predict.http import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, HttpTransport

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
    """A running server process and the log file that holds its output."""

    def __init__(self, process: subprocess.Popen, url: str, log_path: Path) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path

    @classmethod
    def start(cls, artifact: Path, *, port: int, api_key: str | None, device: str,
              startup_timeout: float) -> "LocalServer":
        log = tempfile.NamedTemporaryFile(prefix="finetune-sdk-serve-", suffix=".log", delete=False)
        env = dict(os.environ)
        env.pop("FINETUNE_SDK_API_KEY", None)
        if api_key:
            env["FINETUNE_SDK_API_KEY"] = api_key  # not on the command line, where `ps` would show it
        command = [sys.executable, "-m", "finetune_sdk.serve", str(artifact), "--host", HOST, "--port", str(port),
                   "--device", device, "--log-level", "warning"]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        server = cls(process, f"http://{HOST}:{port}", Path(log.name))
        server.wait_until_ready(startup_timeout)
        return server

    def wait_until_ready(self, timeout: float) -> None:
        """Poll /ping until the model is loaded; fail with the server's own output if it dies or stalls."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EndpointError(f"the local server exited with code {self.process.returncode} before it was "
                                    f"ready; its output ends with:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/ping", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise EndpointError(f"the local server was not ready within {timeout:.0f}s; raise startup_timeout= for "
                            f"big models. Its output ends with:\n{self.log_tail()}")

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Terminate, then kill if it has not exited after ``grace`` seconds."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_path.unlink(missing_ok=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no output)"


class LocalServerTransport(HttpTransport):
    """The HTTP transport for a server this process started; ``close`` also stops the server."""

    def __init__(self, server: LocalServer, **options: Any) -> None:
        super().__init__(server.url, **options)
        self.server = server

    def close(self) -> None:
        super().close()
        self.server.stop()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]
