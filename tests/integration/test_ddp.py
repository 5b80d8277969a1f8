"""Two training processes under torchrun (gloo, CPU) compute the same adapter as one process.

Same spec, same global batch (8 examples per optimizer step): the two processes each train on half
of every step's examples, as packed rows, and sum their gradients; the single process trains on
padded batches. Tolerance: adapter weights agree to atol 1e-5 after 3 steps (fp32 sums in a
different order), the eval loss to a relative 1e-5.
"""

import os
import subprocess
import sys

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


def test_two_sagemaker_hosts_on_loopback_match_one_process(tiny_model_dir, tmp_path, counsel_rows):
    """Two training containers (algo-1, algo-2), each with its own /opt/ml, run the container program as
    SageMaker would on two instances; each starts torchrun, and they meet at a master on 127.0.0.1.
    Only host 1 writes the model directory and checkpoints; the adapter equals a one-process run's."""
    from safetensors.torch import load_file

    from finetune_sdk.artifact import Artifact
    from finetune_sdk.deployers.local import free_port
    from finetune_sdk.train.container import run_in_container
    from tests.conftest import fake_opt_ml

    tuner = FineTuner(str(tiny_model_dir), counsel_rows[:48], COUNSEL, output_dir=tmp_path / "user" / "out",
                      eval_fraction=0.25, training=TrainingSettings(max_steps=3, batch_size=8, learning_rate=1e-3,
                                                                    warmup_ratio=0, save_every=1, progress=False))
    layouts = {}
    for host in ("one", "algo-1", "algo-2"):
        opt = tmp_path / host / "opt" / "ml"
        layouts[host] = (opt, fake_opt_ml(opt, tuner, tiny_model_dir))
        for folder in ("model", "checkpoints"):  # SageMaker creates both (CheckpointConfig is set)
            (opt / folder).mkdir()
    opt, environ = layouts["one"]
    run_in_container(opt / "code" / "finetune_sdk_spec.json", environ)

    port = str(free_port())
    hosts = {}
    for host in ("algo-1", "algo-2"):
        opt, environ = layouts[host]
        env = {**{k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}, **environ,
               "SM_HOSTS": '["algo-1", "algo-2"]', "SM_CURRENT_HOST": host,
               "FINETUNE_SDK_MASTER_ADDR": "127.0.0.1", "FINETUNE_SDK_MASTER_PORT": port}
        log = open(tmp_path / f"{host}.log", "w")
        hosts[host] = (subprocess.Popen([sys.executable, "-m", "finetune_sdk.train", "--spec",
                                         str(opt / "code" / "finetune_sdk_spec.json")],
                                        env=env, stdout=log, stderr=subprocess.STDOUT), log)
    for host, (process, log) in hosts.items():
        process.wait(timeout=600)
        log.close()
        assert process.returncode == 0, (tmp_path / f"{host}.log").read_text()[-4000:]

    one, first, second = (layouts[h][0] for h in ("one", "algo-1", "algo-2"))
    assert list((second / "model").iterdir()) == [] and list((second / "checkpoints").iterdir()) == []
    assert [p.name for p in sorted((first / "checkpoints").glob("step-*"))] == ["step-000001", "step-000002"]
    artifact, reference = Artifact.load(first / "model"), Artifact.load(one / "model")
    assert artifact.metrics["processes"] == 2 and reference.metrics["processes"] == 1
    assert artifact.metrics["real_tokens"] == reference.metrics["real_tokens"]
    assert artifact.metrics["eval_loss"] == pytest.approx(reference.metrics["eval_loss"], rel=1e-5)
    assert artifact.manifest["base_model"] == reference.manifest["base_model"]
    a = load_file(one / "model" / "adapter_model.safetensors")
    b = load_file(first / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)
    assert "host algo-2 of ['algo-1', 'algo-2'] starts 1 training process(es)" in (tmp_path / "algo-2.log").read_text()
