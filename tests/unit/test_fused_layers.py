"""Fused training layers give the same loss and gradients as the code they replace (tiny model, fp32, CPU):
LoRA layers as one autograd node against PEFT, F.rms_norm against the model's own RMSNorm.

Tolerance: loss to a relative 1e-6, every gradient to rtol 1e-4 / atol 1e-6 (only the order of
floating-point sums differs).
"""

import pytest
import torch

from finetune_sdk.encoding import Encoder
from finetune_sdk.train.batching import collate
from finetune_sdk.train.lora_matmul import fuse_lora_linears
from finetune_sdk.train.loss import completion_loss
from tests.conftest import COUNSEL


def _peft_model(tiny_model_dir, dropout=0.0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    with torch.no_grad():  # PEFT starts B at zero; random B makes every adapter matrix receive a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    return model


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss, _ = completion_loss(model, batch)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_fused_lora_layers_match_peft(tiny_model_dir, smol_tokenizer, counsel_rows, monkeypatch):
    from finetune_sdk.train import lora_matmul

    model = _peft_model(tiny_model_dir)
    encoder = Encoder(smol_tokenizer, COUNSEL)
    batch = collate([encoder.encode_example(row) for row in counsel_rows[:4]], smol_tokenizer.pad_token_id)
    peft_loss, peft_grads = _loss_and_grads(model, batch)
    assert fuse_lora_linears(model) == 2 * 7
    calls = []  # count the layers that really take the fused path
    original = lora_matmul._LoraMatmul.apply
    monkeypatch.setattr(lora_matmul._LoraMatmul, "apply", lambda *a: calls.append(1) or original(*a))
    fused_loss, fused_grads = _loss_and_grads(model, batch)
    assert len(calls) == 2 * 7
    assert fused_loss == pytest.approx(peft_loss, rel=1e-6)
    assert fused_grads.keys() == peft_grads.keys() and len(peft_grads) == 2 * 7 * 2
    for name, grad in peft_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_layers_the_fused_path_does_not_cover_run_peft(tiny_model_dir, smol_tokenizer, counsel_rows, monkeypatch):
    from finetune_sdk.train import lora_matmul

    model = _peft_model(tiny_model_dir, dropout=0.1)  # dropout: PEFT's own forward must run
    fuse_lora_linears(model)
    monkeypatch.setattr(lora_matmul._LoraMatmul, "apply",
                        lambda *a: pytest.fail("dropout layers must not take the fused path"))
    encoder = Encoder(smol_tokenizer, COUNSEL)
    batch = collate([encoder.encode_example(row) for row in counsel_rows[:2]], smol_tokenizer.pad_token_id)
    loss, _ = completion_loss(model, batch)
    loss.backward()
    with model.disable_adapter(), torch.no_grad():  # adapters off: the base model's output
        completion_loss(model, batch)


def test_fused_rms_norm_matches_the_models_own(tiny_model_dir, smol_tokenizer, counsel_rows):
    from transformers import AutoModelForCausalLM

    from finetune_sdk.train.rms_norm import use_fused_rms_norm

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.requires_grad_(True)  # full fine-tuning: the norm weights get gradients too
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.1)
    encoder = Encoder(smol_tokenizer, COUNSEL)
    batch = collate([encoder.encode_example(row) for row in counsel_rows[:4]], smol_tokenizer.pad_token_id)
    own_loss, own_grads = _loss_and_grads(model, batch)
    assert use_fused_rms_norm(model) == 2 * 2 + 1
    fused_loss, fused_grads = _loss_and_grads(model, batch)
    assert fused_loss == pytest.approx(own_loss, rel=1e-6)
    for name, grad in own_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_an_rms_norm_that_computes_something_else_keeps_its_forward():
    from finetune_sdk.train.rms_norm import use_fused_rms_norm

    class OffsetRMSNorm(torch.nn.Module):  # Gemma's form: the weight is stored as an offset from 1
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.full((8,), 0.5))
            self.variance_epsilon = 1e-6

        def forward(self, x):
            return (1 + self.weight) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)

    model = torch.nn.Sequential(OffsetRMSNorm())
    assert use_fused_rms_norm(model) == 0
    assert "forward" not in vars(model[0])
