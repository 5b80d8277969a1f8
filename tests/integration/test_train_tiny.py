"""Real training runs on a tiny random Llama (SmolLM2 tokenizer), through the public API."""

import json

import pytest
import torch

from finetune_sdk import FineTuner, Predictor, TrainingSettings
from finetune_sdk.backends.local import LocalBackend
from tests.conftest import COUNSEL

PROMPTS = ["I haven't slept properly since March.", "My brother keeps borrowing money and never pays it back.",
           "Every time I see a red car I'm back at the crash."]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory, counsel_rows):
    """One LoRA run with merge=True, trained in a child process (the default local backend)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    tuner = FineTuner(str(tiny_model_dir), counsel_rows[:96], COUNSEL, output_dir=out, eval_fraction=0.25,
                      training=TrainingSettings(epochs=1, batch_size=8, learning_rate=1e-3, merge=True, progress=False))
    return tuner, tuner.train()


def test_artifact_layout_and_manifest(trained):
    tuner, artifact = trained
    files = {p.name for p in artifact.path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "finetune_sdk.json", "tokenizer.json", "merged"} <= files
    m = artifact.manifest
    assert m["template"] == COUNSEL.to_dict() and m["stop_tokens"] == ["<|im_end|>"]
    assert m["dataset"]["train_rows"] == 72 and m["dataset"]["eval_rows"] == 24
    assert m["dataset"]["fingerprint"].startswith("sha256:")
    assert m["metrics"]["steps"] == 9 and m["metrics"]["eval_loss"] > 0
    assert m["metrics"]["padding_efficiency"] >= 0.8
    assert not list(artifact.path.parent.glob(".tiny.staging-*"))
    events = [e["event"] for e in tuner.job.events()]
    assert events[0] == "data" and events[-1] == "saved"
    assert tuner.job.status == "completed"


def test_vanilla_peft_and_transformers_load_the_artifact_and_agree(trained, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tuner, artifact = trained
    predictor = tuner.deploy()
    ours = [p.text for p in predictor.predict_batch(PROMPTS, max_new_tokens=8)]
    encoder = predictor.transport.engine.encoder
    tokenizer = encoder.tokenizer
    base = AutoModelForCausalLM.from_pretrained(json.loads((artifact.path / "adapter_config.json").read_text())
                                                ["base_model_name_or_path"])
    peft_model = PeftModel.from_pretrained(base, str(artifact.path)).eval()
    merged = AutoModelForCausalLM.from_pretrained(artifact.path / "merged").eval()
    for model in (peft_model, merged):
        texts = []
        for prompt in PROMPTS:
            ids = torch.tensor([encoder.encode_prompt({"questionText": prompt})])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                 do_sample=False, eos_token_id=encoder.stop_token_ids,
                                 pad_token_id=tokenizer.pad_token_id)
            new = out[0, ids.shape[1]:].tolist()
            new = new[:next((i for i, t in enumerate(new) if t in encoder.stop_token_ids), len(new))]
            texts.append(tokenizer.decode(new, skip_special_tokens=True).strip())
        assert texts == ours


def test_resume_continues_from_the_last_checkpoint(tiny_model_dir, tmp_path, counsel_rows):
    """Stopping after 4 steps and resuming gives the same adapter as one uninterrupted run."""
    def tuner(out, max_steps):
        return FineTuner(str(tiny_model_dir), counsel_rows[:64], COUNSEL, output_dir=out, eval_fraction=0,
                         backend=LocalBackend(in_process=True),
                         training=TrainingSettings(epochs=1, batch_size=8, save_every=2, max_steps=max_steps,
                                                   warmup_ratio=0, lr_scheduler="constant", progress=False))

    full = tuner(tmp_path / "full", 8).train()
    first = tuner(tmp_path / "resumed", 4)
    first.train()
    assert (tmp_path / "resumed.work" / "checkpoints" / "step-000002").is_dir()
    resumed = tuner(tmp_path / "resumed", 8).train(resume=True)
    assert [e["event"] for e in tuner(tmp_path / "resumed", 8).backend.list_events(
        str((tmp_path / "resumed.work").resolve()))].count("resumed") == 1
    from safetensors.torch import load_file

    from finetune_sdk import TrainingError

    other_data = FineTuner(str(tiny_model_dir), counsel_rows[1:65], COUNSEL, output_dir=tmp_path / "resumed",
                           eval_fraction=0, backend=LocalBackend(in_process=True),
                           training=TrainingSettings(epochs=1, batch_size=8, max_steps=8, progress=False))
    with pytest.raises(TrainingError, match="trained on different data"):
        other_data.train(resume=True)

    a = load_file(full.path / "adapter_model.safetensors")
    b = load_file(resumed.path / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_resume_with_other_settings_is_refused(tiny_model_dir, tmp_path, counsel_rows):
    """A checkpoint's weights, optimizer and data position belong to its settings: a resume that changes them
    is refused (the optimizer state would silently keep the old learning rate); a longer run is allowed."""
    from finetune_sdk import TrainingError

    def tuner(lora=None, **training):
        settings = TrainingSettings(**{"batch_size": 8, "max_steps": 4, "save_every": 2, "progress": False, **training})
        return FineTuner(str(tiny_model_dir), counsel_rows[:48], COUNSEL, output_dir=tmp_path / "run", eval_fraction=0,
                         backend=LocalBackend(in_process=True), lora=lora, training=settings)

    tuner().train()
    for lora, training, change in ((None, {"learning_rate": 1e-2}, "learning_rate: 0.0005 -> 0.01"),
                                   ({"r": 8}, {}, "lora: .*'r': 16"), (None, {"batch_size": 4}, "batch_size: 8 -> 4")):
        with pytest.raises(TrainingError, match=f"trained with other settings \\({change}.*train again without"):
            tuner(lora, **training).train(resume=True)
    assert tuner(max_steps=6).train(resume=True).metrics["steps"] == 6


def test_eval_loss_is_of_the_saved_adapter_when_training_stops_mid_epoch(tiny_model_dir, tmp_path, counsel_rows):
    """1.5 epochs: the last epoch-end evaluation is 3 steps old; the reported eval loss is the final weights'."""
    from peft import PeftModel

    from finetune_sdk.encoding import Encoder, encode_dataset
    from finetune_sdk.models import load_model, load_tokenizer, resolve_model
    from finetune_sdk.train.program import evaluate_loss

    tuner = FineTuner(str(tiny_model_dir), counsel_rows[:48], COUNSEL, output_dir=tmp_path / "frac", eval_fraction=0.25,
                      backend=LocalBackend(in_process=True),
                      training=TrainingSettings(epochs=1.5, batch_size=8, learning_rate=1e-2, progress=False))
    metrics = tuner.train().metrics
    assert metrics["steps"] == 8 and [h["step"] for h in metrics["eval_history"]] == [5]
    ref = resolve_model(str(tiny_model_dir))
    tokenizer = load_tokenizer(ref)
    examples, _ = encode_dataset(Encoder(tokenizer, COUNSEL, max_length=1024), tuner.eval_rows)
    model = PeftModel.from_pretrained(load_model(ref, dtype=torch.float32), str(tmp_path / "frac"))
    actual = evaluate_loss(model, examples, tokenizer.pad_token_id, torch.device("cpu"), torch.float32)
    assert metrics["eval_loss"] == pytest.approx(actual, rel=1e-4)
    assert metrics["eval_loss"] != pytest.approx(metrics["eval_history"][-1]["eval_loss"], rel=1e-3)


def test_eval_loss_once_at_the_end_or_never(tiny_model_dir, tmp_path, counsel_rows):
    """"end" evaluates the final weights once, as "epoch" does after its last epoch; "off" never evaluates."""
    def run(name, eval_loss):
        return FineTuner(str(tiny_model_dir), counsel_rows[:48], COUNSEL, output_dir=tmp_path / name,
                         eval_fraction=0.25, backend=LocalBackend(in_process=True),
                         training=TrainingSettings(epochs=2, batch_size=8, learning_rate=1e-2, progress=False,
                                                   eval_loss=eval_loss)).train().metrics

    every, end, off = run("epoch", "epoch"), run("end", "end"), run("off", "off")
    assert [h["epoch"] for h in every["eval_history"]] == [1, 2] and end["eval_history"] == []
    assert end["eval_loss"] == pytest.approx(every["eval_loss"], rel=1e-5)
    assert off["eval_loss"] is None and off["eval_history"] == []
    assert off["train_loss_last"] == pytest.approx(every["train_loss_last"], rel=1e-5)


def test_predictor_stops_at_end_of_turn_and_counts_tokens(trained):
    tuner, _ = trained
    with tuner.deploy() as predictor:
        p = predictor.predict(PROMPTS[0], max_new_tokens=5)
    assert p.finish_reason in ("stop", "length") and p.completion_tokens <= 5 and p.prompt_tokens > 10


def test_full_fine_tuning_writes_a_merged_model_that_serves(tiny_model_dir, tmp_path, counsel_rows):
    tuner = FineTuner(str(tiny_model_dir), counsel_rows[:16], COUNSEL, output_dir=tmp_path / "full", method="full",
                      eval_fraction=0, backend=LocalBackend(in_process=True),
                      training=TrainingSettings(max_steps=2, batch_size=8, progress=False))
    artifact = tuner.train()
    assert artifact.merged_path is not None and not artifact.has_adapter
    assert artifact.manifest["method"] == "full" and artifact.manifest["lora"] is None
    with tuner.deploy() as predictor:
        assert predictor.predict(PROMPTS[1], max_new_tokens=3).completion_tokens <= 3


def test_lora_on_chosen_layers_only_and_prompt_loss_weight(tiny_model_dir, tmp_path, counsel_rows):
    from safetensors.torch import load_file

    tuner = FineTuner(str(tiny_model_dir), counsel_rows[:16], COUNSEL, output_dir=tmp_path / "top", eval_fraction=0,
                      backend=LocalBackend(in_process=True), lora={"layers": [1]},
                      training=TrainingSettings(max_steps=1, batch_size=8, prompt_loss_weight=0.1, progress=False))
    weights = load_file(tuner.train().path / "adapter_model.safetensors")
    assert weights and all(".layers.1." in key for key in weights)
    assert {key.split(".")[-3] for key in weights} >= {"q_proj", "down_proj"}


def test_frozen_layer_cache_gives_the_same_adapter(tiny_model_dir, tmp_path, counsel_rows):
    """LoRA on the top layer only: caching the frozen layer's outputs changes speed, not results (the
    evaluation runs from the cache too)."""
    from safetensors.torch import load_file

    def train(name, cache):
        tuner = FineTuner(str(tiny_model_dir), counsel_rows[:40], COUNSEL, output_dir=tmp_path / name,
                          eval_fraction=0.2, backend=LocalBackend(in_process=True), lora={"layers": [1]},
                          training=TrainingSettings(max_steps=3, batch_size=8, cache_frozen_layers=cache,
                                                    progress=False))
        artifact = tuner.train()
        return (load_file(artifact.path / "adapter_model.safetensors"), artifact.metrics["eval_loss"],
                {e["event"]: e for e in tuner.backend.list_events(str((tmp_path / f"{name}.work").resolve()))})

    cached, cached_eval, events = train("cached", True)
    plain, plain_eval, plain_events = train("plain", False)
    assert "frozen_layer_cache" in events and "frozen_layer_cache" not in plain_events
    assert events["frozen_layer_cache"]["shared_prefix"] > 0  # the system turn ran once, not once per row
    assert cached_eval == pytest.approx(plain_eval, rel=1e-4)
    for key in plain:
        torch.testing.assert_close(cached[key], plain[key], rtol=1e-4, atol=1e-5)
