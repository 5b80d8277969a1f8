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


def test_cancel_lets_the_training_process_clean_up_and_record_it(tiny_model_dir, tmp_path, counsel_rows):
    """SIGTERM unwinds the program: its status reads cancelled (also to a backend that did not start it), the
    process still ends by SIGTERM, and no artifact or staging folder is left."""
    import signal
    import time

    tuner = FineTuner(str(tiny_model_dir), counsel_rows[:48], COUNSEL, output_dir=tmp_path / "stopped",
                      eval_fraction=0, backend=LocalBackend(),
                      training=TrainingSettings(max_steps=100000, save_every=2, batch_size=8, progress=False))
    tuner.train(wait=False)
    deadline = time.monotonic() + 300
    while not any(e["event"] == "checkpoint" for e in tuner.job.events()):  # inside the step loop
        assert tuner.job.refresh().status in ("queued", "running") and time.monotonic() < deadline
        time.sleep(0.05)
    tuner.job.cancel()
    assert tuner.backend._processes[tuner.job.id].returncode == -signal.SIGTERM
    job = LocalBackend().retrieve(tuner.job.id)
    assert job.status == "cancelled" and job.error == "Cancelled: stopped by SIGTERM" and job.finished_at
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stopped.work"]
    assert not [p for p in (tmp_path / "stopped.work" / "checkpoints").iterdir() if p.name.startswith(".")]
