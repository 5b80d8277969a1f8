"""A training child killed with SIGKILL at a random step, then resumed, ends with the same adapter.

The reference is one uninterrupted run with the same seed. Checkpoints hold the trainable weights,
optimizer, scheduler, RNG states and the data position, so the resumed run replays exactly the
batches and random numbers the killed one would have used.

Tolerance: every adapter tensor equal within atol=1e-6 (rtol=0); both runs use the same CPU kernels.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from finetune_sdk import FineTuner, TrainingSettings
from finetune_sdk.backends.local import LocalBackend
from tests.conftest import COUNSEL

TOTAL_STEPS = 14  # two epochs of 8 and 6 steps: the kill can land in either, mid-epoch
SAVE_EVERY = 3
ATOL = 1e-6


def tuner(model: Path, rows: list[dict], out: Path, backend: LocalBackend) -> FineTuner:
    return FineTuner(str(model), rows, COUNSEL, output_dir=out, eval_fraction=0, seed=7, backend=backend,
                     training=TrainingSettings(epochs=2, batch_size=8, max_steps=TOTAL_STEPS, save_every=SAVE_EVERY,
                                               keep_checkpoints=2, learning_rate=2e-3, progress=False))


def checkpoint_steps(work: Path) -> list[int]:
    events = work / "events.jsonl"
    if not events.is_file():
        return []
    lines = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    return [e["step"] for e in lines if e["event"] == "checkpoint"]


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_model_dir, tmp_path, counsel_rows):
    rows = counsel_rows[:64]
    reference = tuner(tiny_model_dir, rows, tmp_path / "reference", LocalBackend(in_process=True)).train()

    rng = random.Random()
    kill_after = rng.choice(range(SAVE_EVERY, TOTAL_STEPS - SAVE_EVERY, SAVE_EVERY))  # a checkpoint that must exist
    extra = rng.uniform(0, 0.3)  # then a random moment within the next steps (maybe mid-checkpoint)
    print(f"killing after checkpoint step {kill_after} + {extra:.2f}s")

    out = tmp_path / "killed"
    work = out.with_name("killed.work")
    first = tuner(tiny_model_dir, rows, out, LocalBackend())
    first.train(wait=False)
    child = first.backend._processes[first.job.id]  # the training child the local backend started
    deadline = time.monotonic() + 300
    while not any(s >= kill_after for s in checkpoint_steps(work)):
        assert child.poll() is None, "the child ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    time.sleep(extra)
    child.send_signal(signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL
    assert first.job.refresh().status == "cancelled"
    assert not out.exists(), "a killed run must leave no artifact"
    saved = checkpoint_steps(work)
    assert max(saved) < TOTAL_STEPS, "the run finished before the kill; nothing was tested"

    resumed_tuner = tuner(tiny_model_dir, rows, out, LocalBackend())
    resumed = resumed_tuner.train(resume=True)
    resumed_at = [e["step"] for e in resumed_tuner.job.events() if e["event"] == "resumed"]
    assert len(resumed_at) == 1 and resumed_at[0] in saved and resumed_at[0] >= kill_after
    assert resumed.metrics["steps"] == TOTAL_STEPS

    a = load_file(reference.path / "adapter_model.safetensors")
    b = load_file(resumed.path / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=ATOL)
