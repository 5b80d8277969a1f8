"""The local deployer's child process: readiness proves the server is ours, and no server or log is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from finetune_sdk import EndpointError, PortInUseError
from finetune_sdk.deployers import local
from finetune_sdk.deployers.local import LocalServer, LocalServerDeployer
from tests.integration.test_server import ThreadedServer, tuner  # noqa: F401  (module fixture)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def other_server(tiny_engine):
    """Another finetune_sdk server already listening (one started by hand, say): its /ping answers 200."""
    from finetune_sdk.serve.app import create_app

    with ThreadedServer(create_app(tiny_engine)) as server:
        yield server


@pytest.fixture
def started(monkeypatch) -> list[LocalServer]:
    """Every LocalServer whose start reaches the readiness wait, to inspect its child afterwards."""
    servers: list[LocalServer] = []
    wait = LocalServer.wait_until_ready

    def recording(self: LocalServer, timeout: float) -> None:
        servers.append(self)
        wait(self, timeout)

    monkeypatch.setattr(LocalServer, "wait_until_ready", recording)
    return servers


def test_a_busy_port_is_refused(tuner, other_server):
    with pytest.raises(PortInUseError, match=f"port {other_server.port} .* in use"):
        LocalServerDeployer().deploy(tuner.artifact, port=other_server.port, device="cpu")


def test_another_server_answering_ping_is_not_taken_for_ours(tuner, other_server, started, monkeypatch):
    monkeypatch.setattr(local, "port_in_use", lambda port: False)  # the port was taken after it was checked
    with pytest.raises(PortInUseError, match=f"port {other_server.port} .* in use"):
        LocalServerDeployer().deploy(tuner.artifact, port=other_server.port, device="cpu")
    (server,) = started
    assert server.process.returncode is not None and not server.log_path.exists()


def test_an_interrupted_start_stops_the_child_and_removes_its_log(tuner, started, monkeypatch):
    def interrupted(self: LocalServer, timeout: float) -> None:
        started.append(self)
        raise KeyboardInterrupt  # Ctrl-C while the model loads

    monkeypatch.setattr(LocalServer, "wait_until_ready", interrupted)
    with pytest.raises(KeyboardInterrupt):
        LocalServerDeployer().deploy(tuner.artifact, device="cpu")
    (server,) = started
    assert server.process.returncode is not None and not server.log_path.exists()


def test_a_child_that_dies_at_start_reports_its_output_and_leaves_no_log(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(EndpointError, match="exited with code 1(.|\n)*not a finetune_sdk artifact"):
        LocalServerDeployer().deploy(tmp_path / "missing", device="cpu")
    assert not list(tmp_path.glob("finetune-sdk-serve-*.log"))


def test_an_unclosed_predictor_stops_its_server_when_python_exits(tuner):
    script = _deploying(tuner)  # and exit without p.close()
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    pid, url = done.stdout.split()
    _assert_stopped(int(pid), url)


def test_a_server_stops_when_the_process_that_started_it_is_killed(tuner):
    script = _deploying(tuner) + "import time\ntime.sleep(600)\n"
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        pid, url = parent.stdout.readline().split()
        assert httpx.get(f"{url}/ping").status_code == 200
    finally:
        parent.kill()  # SIGKILL: no finalizer, no atexit
        parent.wait()
        parent.stdout.close()
    _assert_stopped(int(pid), url, within=30)


def _deploying(tuner) -> str:
    """A script that starts a local server for the tuner's artifact and prints the server's pid and URL."""
    return ("from finetune_sdk.deployers.local import LocalServerDeployer\n"
            f"p = LocalServerDeployer().deploy({str(tuner.artifact.path)!r}, device='cpu')\n"
            "print(p.transport.server.process.pid, p.transport.server.url, flush=True)\n")


def _assert_stopped(pid: int, url: str, within: float = 0.0) -> None:
    """The server process is gone (waiting up to ``within`` seconds) and nothing answers at ``url``; a server
    still running is killed, so a failing test leaves nothing behind."""
    deadline = time.monotonic() + within
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(pid)
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "the server outlived the Python process that started it"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/ping")


def _alive(pid: int) -> bool:
    """Running: on Linux a child that exited but that nobody has reaped yet (a zombie) does not count."""
    if Path("/proc/self/stat").exists():
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
