"""The selective-head loss equals the plain causal-LM loss restricted to trained tokens."""

import torch
import torch.nn.functional as F

from finetune_sdk.encoding import IGNORE_INDEX
from finetune_sdk.train.loss import completion_loss


def _tiny(vocab=50):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()


def _batch():
    ids = torch.randint(0, 50, (2, 9))
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 5:9] = ids[0, 5:9]
    labels[1, 3:6] = ids[1, 3:6]
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_selective_head_matches_full_logits():
    model, batch = _tiny(), _batch()
    loss, n = completion_loss(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 50), batch["labels"][:, 1:].reshape(-1), reduction="sum")
    assert n == 7  # 4 trained targets in row 0, 3 in row 1
    torch.testing.assert_close(loss, ref)


def test_prompt_loss_weight_adds_weighted_prompt_tokens():
    model, batch = _tiny(), _batch()
    base, _ = completion_loss(model, batch)
    weighted, n = completion_loss(model, batch, prompt_loss_weight=0.5)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    ce = F.cross_entropy(logits.reshape(-1, 50), batch["input_ids"][:, 1:].reshape(-1), reduction="none").view(2, 8)
    prompt = (batch["labels"][:, 1:] == IGNORE_INDEX) & batch["attention_mask"][:, 1:].bool()
    torch.testing.assert_close(weighted, base + 0.5 * ce[prompt].sum())
    assert n == 7  # 4 trained targets in row 0, 3 in row 1


def test_chunked_head_and_cross_entropy_match_the_plain_loss_and_gradients():
    """Chunks of 5 rows, a trainable head (full fine-tuning) and per-row weights: same loss and gradients."""
    from finetune_sdk.train.loss import _LinearCrossEntropy

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 100, bias=False)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets, weights = torch.randint(0, 100, (37,)), torch.rand(37)
    fused = _LinearCrossEntropy.apply(hidden, head.weight, targets, weights, 5)
    (2 * fused).backward()
    grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = head.weight.grad = None
    plain = (F.cross_entropy(head(hidden), targets, reduction="none") * weights).sum()
    (2 * plain).backward()
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], head.weight.grad)
