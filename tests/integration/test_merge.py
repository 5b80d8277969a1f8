"""Verified merges and export layouts on a trained tiny model: a corrupted merge is caught, a correct one written."""

import json

import pytest
import torch

from finetune_sdk import ArtifactError, FineTuner, TrainingSettings
from finetune_sdk.backends.local import LocalBackend
from finetune_sdk.merge import merged_model, verify_merge
from tests.conftest import COUNSEL


@pytest.fixture()
def artifact(tiny_model_dir, tmp_path, counsel_rows):
    tuner = FineTuner(str(tiny_model_dir), counsel_rows[:40], COUNSEL, output_dir=tmp_path / "a", eval_fraction=0.25,
                      backend=LocalBackend(in_process=True),
                      training=TrainingSettings(max_steps=3, batch_size=8, learning_rate=5e-3, progress=False))
    return tuner.train()


def corrupt(model) -> None:
    """Perturb one merged weight matrix, as a faulty merge path would."""
    torch.manual_seed(1)
    with torch.no_grad():
        weight = model.model.layers[1].mlp.down_proj.weight
        weight += 0.05 * torch.randn_like(weight)


def test_a_correct_merge_is_verified_and_written(artifact, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    assert artifact.merged_path is None
    check = artifact.merge()
    assert check.passed and check.prompts == 8 and check.greedy_agreement == 1.0  # 8 of the run's 10 eval rows
    assert 0 <= check.max_logit_diff < 1e-4 and check.dtype == "float32"
    assert artifact.merged_path is not None and (artifact.merged_path / "model.safetensors").is_file()
    manifest = json.loads((artifact.path / "finetune_sdk.json").read_text())
    assert manifest["merge"]["max_logit_diff"] == check.max_logit_diff and manifest["format_version"] == 1
    assert not [p for p in artifact.path.iterdir() if p.name.startswith(".")]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).model.layers[1].self_attn.q_proj.weight
    merged = AutoModelForCausalLM.from_pretrained(artifact.merged_path).model.layers[1].self_attn.q_proj.weight
    assert (merged - base).abs().max() > 1e-4  # the adapter changed the weights: this merge is not a no-op


def test_a_corrupted_merge_is_caught(artifact):
    model = merged_model(artifact)
    prompts = ["I can't sleep.", {"questionText": "My sister never calls me back."}]
    assert verify_merge(artifact, model, prompts).passed
    corrupt(model)
    check = verify_merge(artifact, model, prompts)
    assert not check.passed and check.max_logit_diff > 1e-2


def test_a_refused_merge_writes_nothing(artifact, monkeypatch):
    import finetune_sdk.merge as merge_module

    before = (artifact.path / "finetune_sdk.json").read_text()
    faulty = merge_module.merged_model

    def corrupted(*args, **kwargs):  # the fault is injected into the merge step only
        model = faulty(*args, **kwargs)
        corrupt(model)
        return model

    monkeypatch.setattr(merge_module, "merged_model", corrupted)
    with pytest.raises(ArtifactError, match="refusing to write the merge: max logit difference"):
        artifact.merge()
    assert artifact.merged_path is None and not (artifact.path / "merged").exists()
    assert (artifact.path / "finetune_sdk.json").read_text() == before
    assert not [p for p in artifact.path.parent.iterdir() if ".staging" in p.name]


def test_export_layouts(artifact, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter = artifact.export(tmp_path / "adapter", layout="adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "finetune_sdk.json"} <= {p.name for p in adapter.iterdir()}
    serving = artifact.export(tmp_path / "lora", layout="lora-serving")
    config = json.loads((serving / "adapter_config.json").read_text())
    launch = json.loads((serving / "serving.json").read_text())
    assert config["base_model_name_or_path"] == artifact.manifest["base_model"]["path"] == launch["base_model"]
    assert launch["vllm"].startswith("vllm serve ") and "--enable-lora" in launch["vllm"]
    merged = artifact.export(tmp_path / "merged", layout="merged")
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert model.config.num_hidden_layers == 2 and (merged / "tokenizer_config.json").is_file()
    with pytest.raises(Exception, match="layout="):
        artifact.export(tmp_path / "x", layout="gguf")


def test_a_full_fine_tune_exports_its_merged_model(tiny_model_dir, tmp_path, counsel_rows):
    """No adapter to fold in: layout='merged' copies the trained model; the adapter layouts point there."""
    from safetensors.torch import load_file

    tuner = FineTuner(str(tiny_model_dir), counsel_rows[:16], COUNSEL, output_dir=tmp_path / "full", method="full",
                      eval_fraction=0, backend=LocalBackend(in_process=True),
                      training=TrainingSettings(max_steps=1, batch_size=8, progress=False))
    artifact = tuner.train()
    exported = artifact.export(tmp_path / "merged", layout="merged")
    assert (exported / "tokenizer_config.json").is_file()
    trained, copied = (load_file(p / "model.safetensors") for p in (artifact.merged_path, exported))
    assert trained.keys() == copied.keys() and all(torch.equal(trained[k], copied[k]) for k in trained)
    for layout in ("adapter", "lora-serving"):
        with pytest.raises(ArtifactError, match="export it with layout='merged'"):
            artifact.export(tmp_path / layout, layout=layout)


def test_loading_an_adapter_shows_no_deprecation_from_inside_peft(artifact):
    """PEFT reads transformers' deprecated is_gradient_checkpointing; users cannot act on that FutureWarning."""
    import warnings

    from finetune_sdk.merge import reference_model
    from finetune_sdk.serve.engine import GenerationEngine

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reference_model(artifact)
        GenerationEngine.from_artifact(artifact.path, device="cpu")
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
