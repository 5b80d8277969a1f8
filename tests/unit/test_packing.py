"""Packed rows train exactly like padded batches: same loss, same LoRA gradients (tiny model, fp32, CPU).

Tolerance: the summed loss agrees to a relative 1e-5 and every LoRA gradient to rtol 1e-4 / atol 1e-6;
the only differences are the order of floating-point sums (per-example attention vs a padding mask).
"""

import pytest
import torch

from finetune_sdk.encoding import Encoder
from finetune_sdk.train.attention import use_varlen_attention
from finetune_sdk.train.batching import collate
from finetune_sdk.train.loss import completion_loss
from finetune_sdk.train.packing import collate_packed, split_by_budget
from tests.conftest import COUNSEL


@pytest.fixture(scope="module")
def lora_model_and_examples(tiny_model_dir, smol_tokenizer, counsel_rows):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():  # PEFT starts B at zero; random B makes every adapter matrix receive a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    encoder = Encoder(smol_tokenizer, COUNSEL)
    examples = [encoder.encode_example(row) for row in counsel_rows[:6]]
    return model, examples, smol_tokenizer.pad_token_id


def _loss_and_grads(model, batches, prompt_loss_weight=0.0):
    model.zero_grad(set_to_none=True)
    total = 0.0
    for batch in batches:
        loss, _ = completion_loss(model, batch, prompt_loss_weight=prompt_loss_weight)
        loss.backward()
        total += float(loss.detach())
    return total, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("prompt_loss_weight", [0.0, 0.1])
def test_packed_rows_give_the_same_loss_and_lora_gradients_as_padded(lora_model_and_examples, prompt_loss_weight):
    model, examples, pad_id = lora_model_and_examples
    assert len({len(e.input_ids) for e in examples}) > 1  # padding is really needed in the padded batch
    padded_loss, padded_grads = _loss_and_grads(model, [collate(examples, pad_id)], prompt_loss_weight)
    use_varlen_attention(model)
    lengths = [len(e.input_ids) for e in examples]
    micro = split_by_budget(range(len(examples)), lengths, budget=sum(lengths) // 2)
    assert len(micro) >= 2  # the packed side runs as several micro-batches, like gradient accumulation
    packed_loss, packed_grads = _loss_and_grads(
        model, [collate_packed([examples[i] for i in m]) for m in micro], prompt_loss_weight)
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    assert padded_grads.keys() == packed_grads.keys() and len(padded_grads) == 2 * 7 * 2
    for name, grad in padded_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_attention_stays_inside_each_example(lora_model_and_examples):
    """Packing an unrelated example in front must not change a row's loss (no attention across the boundary)."""
    model, examples, _ = lora_model_and_examples
    use_varlen_attention(model)
    with torch.no_grad():
        alone, _ = completion_loss(model, collate_packed(examples[1:2]))
        together, _ = completion_loss(model, collate_packed(examples[0:2]))
        first, _ = completion_loss(model, collate_packed(examples[0:1]))
    torch.testing.assert_close(together, alone + first, rtol=1e-5, atol=1e-5)


def test_split_by_budget_keeps_every_example_once_and_respects_the_budget():
    lengths = [5, 9, 3, 7, 2, 8, 12]
    bins = split_by_budget(range(len(lengths)), lengths, budget=10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins if len(b) > 1)
    assert [6] in bins  # longer than the budget: alone in its micro-batch
    assert split_by_budget([2, 0, 1], lengths, None) == [[2, 0, 1]]


def test_the_memory_probe_row_is_never_empty():
    """A first example longer than the probe's token count is probed alone; shorter ones fill the row."""
    from finetune_sdk.encoding import Encoded
    from finetune_sdk.train.budget import probe_row

    examples = [Encoded(list(range(n)), list(range(n))) for n in (12, 3, 4)]
    assert probe_row(examples, tokens=10) == examples[:1]
    assert probe_row(examples[1:], tokens=10) == examples[1:]
    assert probe_row(examples[1:], tokens=5) == examples[1:2]
