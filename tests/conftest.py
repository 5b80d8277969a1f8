"""Shared fixtures: the embedded SmolLM2 tokenizer and a tiny random Llama that uses it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from finetune_sdk.template import PromptTemplate

COUNSEL = PromptTemplate.chat(
    system="You are a mental health assistant.",
    user="{questionText}",
    assistant="Based on what you've described, this sounds like {topic}.",
)


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    """The embedded model's cached safetensors folder (converted from GGUF on first use)."""
    from finetune_sdk.models import embedded_model_dir

    return embedded_model_dir("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smol_tokenizer(smol_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer and chat template (fast to train on a CPU)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=smol_tokenizer.bos_token_id,
                         eos_token_id=smol_tokenizer.eos_token_id, pad_token_id=smol_tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def counsel_rows() -> list[dict]:
    from finetune_sdk.data import sample_dataset_path

    return [json.loads(line) for line in sample_dataset_path().read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir, smol_tokenizer):
    """The untrained tiny Llama ready to serve (prompts of at most 128 tokens): for server tests where what
    the model says does not matter."""
    from transformers import AutoModelForCausalLM

    from finetune_sdk.serve.engine import GenerationEngine

    return GenerationEngine(AutoModelForCausalLM.from_pretrained(tiny_model_dir), smol_tokenizer, COUNSEL,
                            max_length=128)


def fake_opt_ml(opt: Path, tuner: Any, model_dir: Path) -> dict[str, str]:
    """An /opt/ml layout holding what the SageMaker backend uploads for ``tuner`` (channels, spec), and the
    SM_* variables a training container gets for it (one host, no GPU)."""
    for channel, rows in (("train", tuner.train_rows), ("eval", tuner.eval_rows)):
        folder = opt / "input" / "data" / channel
        folder.mkdir(parents=True)
        (folder / f"{channel}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    shutil.copytree(model_dir, opt / "input" / "data" / "model")
    (opt / "code").mkdir()
    tuner.spec().save(opt / "code" / "finetune_sdk_spec.json")
    return {"SM_MODEL_DIR": str(opt / "model"), "SM_OUTPUT_DATA_DIR": str(opt / "output" / "data"),
            "SM_HOSTS": '["algo-1"]', "SM_CURRENT_HOST": "algo-1", "SM_NUM_GPUS": "0", "SM_HPS": "{}",
            "FINETUNE_SDK_CHECKPOINT_DIR": str(opt / "checkpoints"),
            **{f"SM_CHANNEL_{c.upper()}": str(opt / "input" / "data" / c) for c in ("train", "eval", "model")}}
