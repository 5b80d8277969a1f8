"""Train on this machine (cuda > mps > cpu) with the SDK's one training program.

By default the program runs in a child process (``python -m finetune_sdk.train``): a crash or
``cancel()`` cannot take the caller down, and progress goes to the caller's terminal. With
``nproc_per_node=N`` the same program runs under torchrun as N data-parallel processes (one per GPU,
or N CPU processes over gloo).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ConfigError, TrainingError
from ..spec import JobSpec
from .base import TERMINAL, TrainingJob


class LocalBackend:
    """Runs jobs on this machine; ``in_process=True`` runs them in the calling process instead.

    ``nproc_per_node=N`` launches N training processes with torchrun (data parallel).
    """

    def __init__(self, in_process: bool = False, nproc_per_node: int = 1) -> None:
        if nproc_per_node < 1:
            raise ConfigError(f"nproc_per_node must be at least 1, got {nproc_per_node}")
        if in_process and nproc_per_node > 1:
            raise ConfigError("in_process=True runs one process; drop it to train with nproc_per_node > 1")
        self.in_process = in_process
        self.nproc_per_node = nproc_per_node
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    def create(self, spec: JobSpec, *, resume: bool = False) -> TrainingJob:
        folder = spec.work_dir
        folder.mkdir(parents=True, exist_ok=True)
        spec_path = folder / "spec.json"
        spec.save(spec_path)
        job_id = str(folder.resolve())
        (folder / "status.json").write_text(json.dumps({"status": "queued", "created_at": _now()}), encoding="utf-8")
        if self.in_process:
            from ..train.program import run

            run(spec, resume=resume)
        else:
            launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.nproc_per_node}"] \
                if self.nproc_per_node > 1 else []
            cmd = [sys.executable, *launcher, "-m", "finetune_sdk.train", "--spec", str(spec_path)] + \
                (["--resume"] if resume else [])
            self._processes[job_id] = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            (folder / "pid").write_text(str(self._processes[job_id].pid), encoding="utf-8")
        return self.retrieve(job_id)

    def retrieve(self, job_id: str, output_dir: str | None = None) -> TrainingJob:
        folder = Path(job_id)
        status_path = folder / "status.json"
        if not status_path.is_file():
            raise TrainingError(f"no local job at {job_id}")
        data = json.loads(status_path.read_text(encoding="utf-8"))
        process = self._processes.get(job_id)
        status = data.get("status", "queued")
        if process is not None and process.poll() is not None:  # the child may die before writing its status
            if process.returncode == -signal.SIGTERM:
                status = "cancelled"
            elif status not in TERMINAL:
                status = "cancelled" if process.returncode < 0 else "failed"
                data.setdefault("error", f"training process exited with code {process.returncode}")
        elif process is None and status not in TERMINAL and not _alive(_pid(folder)):
            status = "failed"  # a run started elsewhere whose training process is gone without a status
            data.setdefault("error", f"training process {_pid(folder)} ended without recording a result")
        spec = JobSpec.load(folder / "spec.json")
        metrics = _saved_metrics(Path(spec.output_dir)) if status == "completed" else {}
        return TrainingJob(id=job_id, backend=self, status=status, output_dir=spec.output_dir,
                           created_at=data.get("created_at"), started_at=data.get("started_at"), finished_at=data.get("finished_at"),
                           error=data.get("error"), metrics=metrics)

    def list_events(self, job_id: str) -> list[dict[str, Any]]:
        path = Path(job_id) / "events.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def cancel(self, job_id: str) -> None:
        process = self._processes.get(job_id)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait()
        elif process is None and not self.retrieve(job_id).done:  # a job attached to, started elsewhere
            pid = _pid(Path(job_id))
            if pid is not None:
                os.kill(pid, signal.SIGTERM)

    def list_jobs(self, scope: str | None = None) -> list[TrainingJob]:
        """The runs recorded in ``scope`` (a folder; the current directory by default): every ``*.work`` folder
        with a status and a spec, newest first."""
        root = Path(scope or ".")
        folders = [p.parent for p in root.glob("*.work/status.json") if (p.parent / "spec.json").is_file()]
        jobs = [self.retrieve(str(f.resolve())) for f in folders]
        return sorted(jobs, key=lambda j: j.created_at or j.started_at or "", reverse=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _pid(folder: Path) -> int | None:
    """The training child's process id, recorded when it was started (None for in-process runs)."""
    path = folder / "pid"
    return int(path.read_text(encoding="utf-8")) if path.is_file() else None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True  # nothing to check against: trust status.json
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _saved_metrics(artifact: Path) -> dict[str, Any]:
    manifest = artifact / "finetune_sdk.json"
    if not manifest.is_file():
        return {}
    return json.loads(manifest.read_text(encoding="utf-8")).get("metrics", {})
