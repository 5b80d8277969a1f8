"""Two training processes under torchrun (gloo, CPU) compute the same adapter as one process.

Same spec, same global batch (8 examples per optimizer step): the two processes each train on half
of every step's examples, as packed rows, and sum their gradients; the single process trains on
padded batches. Tolerance: adapter weights agree to atol 1e-5 after 3 steps (fp32 sums in a
different order), the eval loss to a relative 1e-5.
"""

import pytest
import torch

from finetune_sdk import ConfigError, FineTuner, TrainingSettings
from finetune_sdk.backends.local import LocalBackend
from tests.conftest import COUNSEL


def _train(tiny_model_dir, rows, out, backend, **training):
    tuner = FineTuner(str(tiny_model_dir), rows, COUNSEL, output_dir=out, eval_fraction=0.25, backend=backend,
                      training=TrainingSettings(max_steps=3, batch_size=8, learning_rate=1e-3, warmup_ratio=0,
                                                progress=False, **training))
    return tuner.train()


def test_two_processes_match_one_process_with_the_same_global_batch(tiny_model_dir, tmp_path, counsel_rows):
    from safetensors.torch import load_file

    rows = counsel_rows[:48]
    one = _train(tiny_model_dir, rows, tmp_path / "one", LocalBackend(in_process=True), packing="padded")
    two = _train(tiny_model_dir, rows, tmp_path / "two", LocalBackend(nproc_per_node=2), packing="packed",
                 tokens_per_micro_batch=256)
    metrics = two.manifest["metrics"]
    assert metrics["processes"] == 2 and metrics["packing"] == "packed" and metrics["padding_efficiency"] == 1.0
    assert metrics["real_tokens"] == one.manifest["metrics"]["real_tokens"]  # every example trained exactly once
    assert metrics["eval_loss"] == pytest.approx(one.manifest["metrics"]["eval_loss"], rel=1e-5)
    a = load_file(one.path / "adapter_model.safetensors")
    b = load_file(two.path / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    moved = 0
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)
        moved += int("lora_B" in key and a[key].abs().max() > 1e-4)
    assert moved > 0  # training really changed the adapter


def test_several_processes_cannot_run_in_the_callers_process():
    with pytest.raises(ConfigError, match="nproc_per_node"):
        LocalBackend(in_process=True, nproc_per_node=2)
