"""The frozen-layer cache's shared prefix: run once, it gives the outputs and gradients of running it per row."""

import pytest
import torch

from finetune_sdk.encoding import Encoder, encode_dataset
from finetune_sdk.train.batching import collate
from finetune_sdk.train.frozen_cache import MIN_SHARED_PREFIX, FrozenLayerCache, shared_prefix_length
from tests.conftest import COUNSEL


def test_shared_prefix_length():
    head = list(range(100, 100 + MIN_SHARED_PREFIX + 2))
    assert shared_prefix_length([head + [1, 2], head + [3], head + [1, 4, 5]]) == len(head)
    assert shared_prefix_length([head + [1, 2], head + [1, 2]]) == len(head) + 1  # one token is left after it
    assert shared_prefix_length([head[:MIN_SHARED_PREFIX - 1] + [1], head[:MIN_SHARED_PREFIX - 1] + [2]]) == 0
    assert shared_prefix_length([head + [1], [7] + head]) == 0
    assert shared_prefix_length([]) == 0


@pytest.fixture(scope="module")
def lora_and_examples(tiny_model_dir, counsel_rows):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)  # equal beyond rounding
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                            layers_to_transform=[1], init_lora_weights=False))
    examples, _ = encode_dataset(Encoder(AutoTokenizer.from_pretrained(tiny_model_dir), COUNSEL, max_length=1024),
                                 counsel_rows[:12])
    return model, examples


def _outputs_and_grads(model, examples, share_prefix):
    cache = FrozenLayerCache(model, 1, share_prefix=share_prefix)
    cache.build(examples, torch.device("cpu"))
    idx = [0, 3, 5, 7]
    batch = collate([examples[i] for i in idx], pad_id=0)
    model.train()
    model.zero_grad()
    hidden = cache.last_hidden(idx, batch)
    (hidden * batch["attention_mask"][..., None]).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return cache, hidden.detach(), batch["attention_mask"].bool(), grads


def test_a_shared_prefix_gives_the_same_outputs_and_gradients(lora_and_examples):
    model, examples = lora_and_examples
    shared, out, mask, grads = _outputs_and_grads(model, examples, True)
    plain, plain_out, _, plain_grads = _outputs_and_grads(model, examples, False)
    assert shared.prefix > MIN_SHARED_PREFIX and plain.prefix == 0  # the system turn and more
    assert all(len(s) + shared.prefix == len(e.input_ids) for s, e in zip(shared.states, examples))
    torch.testing.assert_close(out[mask], plain_out[mask], rtol=1e-9, atol=1e-9)
    assert grads.keys() == plain_grads.keys() and grads
    for name in grads:
        assert grads[name].abs().max() > 0
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-9, atol=1e-9)


def test_the_cache_checks_itself_against_the_full_model(lora_and_examples):
    model, examples = lora_and_examples
    cache = FrozenLayerCache(model, 1)
    cache.build(examples, torch.device("cpu"))
    assert cache.prefix and cache.agrees_with_full_model([1, 2], collate([examples[1], examples[2]], pad_id=0))


def test_a_prefix_the_model_does_not_continue_from_is_not_shared(lora_and_examples, monkeypatch):
    """If rows continued from the prefix's keys and values differ from whole rows (here the cache handed to the
    model is empty, as when a model ignores it), the cache runs every row whole instead."""
    from transformers.cache_utils import Cache

    model, examples = lora_and_examples
    monkeypatch.setattr(FrozenLayerCache, "_frozen_prefix", lambda self, rows: Cache(layers=[]))
    cache = FrozenLayerCache(model, 1)
    cache.build(examples, torch.device("cpu"))
    assert cache.prefix == 0 and all(len(s) == len(e.input_ids) for s, e in zip(cache.states, examples))
    assert cache.agrees_with_full_model([1, 2], collate([examples[1], examples[2]], pad_id=0))
