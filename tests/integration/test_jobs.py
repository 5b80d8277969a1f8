"""Listing and re-attaching to local runs from a fresh FineTuner (as after a restart)."""

import json
import subprocess
import sys

from finetune_sdk import FineTuner, TrainingSettings
from finetune_sdk.backends.local import LocalBackend
from tests.conftest import COUNSEL


def tuner_for(tiny_model_dir, rows, out, **backend):
    return FineTuner(str(tiny_model_dir), rows, COUNSEL, output_dir=out, eval_fraction=0, backend=LocalBackend(**backend),
                     training=TrainingSettings(max_steps=2, batch_size=8, progress=False))


def test_jobs_lists_past_runs_and_attach_follows_a_running_one(tiny_model_dir, tmp_path, counsel_rows):
    rows = counsel_rows[:16]
    tuner_for(tiny_model_dir, rows, tmp_path / "first", in_process=True).train()
    running = tuner_for(tiny_model_dir, rows, tmp_path / "second")  # a child process
    running.train(wait=False)

    fresh = tuner_for(tiny_model_dir, rows, tmp_path / "other")
    jobs = {j.id: j for j in fresh.jobs()}
    assert set(jobs) == {str((tmp_path / "first.work").resolve()), str((tmp_path / "second.work").resolve())}
    assert all(j.created_at and j.created_at.endswith("+00:00") for j in jobs.values())
    assert jobs[str((tmp_path / "first.work").resolve())].status == "completed"

    job = fresh.attach(str((tmp_path / "second.work").resolve()))
    assert fresh.output_dir == (tmp_path / "second").resolve()
    job.wait(timeout=300, poll=0.2)
    assert job.status == "completed" and job.started_at and job.finished_at and job.metrics["steps"] == 2
    assert fresh.artifact.path == (tmp_path / "second").resolve()
    assert [e["event"] for e in job.events()][-1] == "saved"
    assert fresh.jobs()[0].created_at >= fresh.jobs()[-1].created_at


def test_a_run_whose_process_vanished_is_failed_not_running_forever(tiny_model_dir, tmp_path, counsel_rows):
    tuner = tuner_for(tiny_model_dir, counsel_rows[:16], tmp_path / "gone", in_process=True)
    tuner.train()
    work = tmp_path / "gone.work"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (work / "pid").write_text(str(dead.pid))
    (work / "status.json").write_text(json.dumps({"status": "running", "created_at": "2026-01-01T00:00:00+00:00"}))
    job = LocalBackend().retrieve(str(work.resolve()))
    assert job.status == "failed" and str(dead.pid) in job.error
    assert LocalBackend().list_jobs(str(tmp_path / "empty")) == []
