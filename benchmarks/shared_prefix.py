"""The frozen-layer cache with and without its shared prefix, side by side in one process.

Builds the cache both ways over the demo's first ``--examples`` training rows, then runs forward and
backward of each epoch batch through both caches in turn (``--passes`` times), so the machine's speed
drifts alike for both. Prints JSON: build seconds, step seconds and their ratios (plain / shared).

    python benchmarks/shared_prefix.py [--examples 160] [--passes 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from finetune_sdk.demo import demo_tuner
from finetune_sdk.encoding import Encoder, encode_dataset
from finetune_sdk.models import load_tokenizer, resolve_model
from finetune_sdk.template import PromptTemplate
from finetune_sdk.train.batching import collate, epoch_batches
from finetune_sdk.train.frozen_cache import FrozenLayerCache
from finetune_sdk.train.program import _load_for_method, backward_micro_batch, prepare_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=160)
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()

    spec = demo_tuner("runs/bench-shared-prefix").spec()
    ref = resolve_model(spec.model)
    tokenizer = load_tokenizer(ref)
    encoder = Encoder(tokenizer, PromptTemplate.from_dict(spec.template), max_length=spec.max_length)
    examples, _ = encode_dataset(encoder, demo_tuner("runs/bench-shared-prefix").train_rows[:args.examples])
    cpu = torch.device("cpu")
    model = prepare_model(spec, _load_for_method(spec, ref, torch.float32, cpu))
    model.train()
    first = min(spec.lora.layers)

    caches, build = {}, {True: 0.0, False: 0.0}
    for share in (True, False, True, False):  # each built twice, alternating; the second build is kept
        cache = FrozenLayerCache(model, first, share_prefix=share)
        began = time.perf_counter()
        cache.build(examples, cpu)
        build[share] += time.perf_counter() - began
        caches[share] = cache

    steps = {True: 0.0, False: 0.0}
    batches = epoch_batches([len(e.input_ids) for e in examples], spec.training.batch_size, spec.seed, 0)
    for _ in range(args.passes):
        for idx in batches:
            batch = collate([examples[i] for i in idx], tokenizer.pad_token_id)
            trained = sum(examples[i].n_trained for i in idx)
            for share in (True, False):
                began = time.perf_counter()
                backward_micro_batch(model, batch, spec.training, torch.float32, trained, cache=caches[share],
                                     cache_idx=idx)
                steps[share] += time.perf_counter() - began
                model.zero_grad(set_to_none=True)

    print(json.dumps({
        "examples": len(examples), "shared_prefix_tokens": caches[True].prefix,
        "mean_tokens_per_example": sum(len(e.input_ids) for e in examples) / len(examples),
        "build_seconds": {"shared": round(build[True] / 2, 2), "plain": round(build[False] / 2, 2)},
        "step_seconds": {"shared": round(steps[True], 1), "plain": round(steps[False], 1)},
        "build_ratio_plain_over_shared": round(build[False] / build[True], 3),
        "step_ratio_plain_over_shared": round(steps[False] / steps[True], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
