"""The training-backend seam and the job every backend returns."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol

from ..errors import TrainingError
from ..spec import JobSpec

JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


@dataclass
class TrainingJob:
    """A training run on some backend; refresh with :meth:`refresh`, block with :meth:`wait`."""

    id: str
    backend: "TrainingBackend"  # created_at/started_at/finished_at are ISO 8601 UTC strings
    status: JobStatus = "queued"
    output_dir: str = ""
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def refresh(self) -> "TrainingJob":
        latest = self.backend.retrieve(self.id)
        self.__dict__.update({k: v for k, v in latest.__dict__.items() if k != "backend"})
        return self

    def events(self) -> list[dict[str, Any]]:
        return self.backend.list_events(self.id)

    def cancel(self) -> None:
        self.backend.cancel(self.id)
        self.refresh()

    def wait(self, timeout: float | None = None, poll: float = 1.0,
             sleep: Callable[[float], None] = time.sleep) -> "TrainingJob":
        """Block until the job ends; raise TrainingError if it failed or was cancelled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.refresh().done:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {self.status} after {timeout} s")
            sleep(poll)
        if self.status != "completed":
            raise TrainingError(f"job {self.id} {self.status}: {self.error or 'no reason given'}")
        return self


class TrainingBackend(Protocol):
    """Runs a JobSpec somewhere and reports on it."""

    def create(self, spec: JobSpec, *, resume: bool = False) -> TrainingJob: ...

    def retrieve(self, job_id: str, output_dir: str | None = None) -> TrainingJob:
        """The job's state. ``output_dir`` is where a remote job this backend did not start puts its artifact
        (a local job's folder is its id, so the local backend has no use for it)."""
        ...

    def list_events(self, job_id: str) -> list[dict[str, Any]]: ...

    def cancel(self, job_id: str) -> None: ...

    def list_jobs(self, scope: str | None = None) -> list[TrainingJob]:
        """Jobs this backend can find, newest first. ``scope`` is where a FineTuner keeps its runs (local: the
        folder holding its output_dir); a remote backend may read it as a name prefix or ignore it."""
        ...
