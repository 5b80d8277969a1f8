"""Where a served request's time goes: prefill per prompt, and decode steps alone vs in a batch of 32.

    python benchmarks/decode_costs.py [ARTIFACT] [--model smollm2-135m-instruct] [--rows 32] [--rounds 2]
                                      [--threads N]

Without ARTIFACT it loads the embedded base model (``--model``), as the server's ``--model`` does.

Prefills ``--rows`` held-out questions one by one into a continuous batch (as the server does), decodes
until every row has finished, then times decode steps of a single row. From these it prints the most
that batching can buy per answer: a request alone costs ``prefill + tokens x step(1)``, in a full batch
``prefill + (decode time of the batch) / rows``; prefill is the same either way, so the larger its
share, the lower the ceiling on the throughput ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from finetune_sdk.data import load_rows, split_rows


def one_round(engine, prompts: list[list[int]]) -> dict[str, float]:
    batch = engine.decode_batch()
    tokens = {}
    started = time.perf_counter()
    for i, prompt in enumerate(prompts):
        for tag, generation in batch.add(i, prompt, 32, []):
            tokens[tag] = generation.completion_tokens
    prefill = (time.perf_counter() - started) / len(prompts)
    started, steps = time.perf_counter(), 0
    while batch:
        for tag, generation in batch.step():
            tokens[tag] = generation.completion_tokens
        steps += 1
    batched_decode = time.perf_counter() - started
    single = engine.decode_batch()
    single.add("alone", prompts[0], 10**6, [])
    started = time.perf_counter()
    for _ in range(8):
        single.step()
    step_alone = (time.perf_counter() - started) / 8
    mean_tokens = sum(tokens.values()) / len(tokens)
    alone = prefill + (mean_tokens - 1) * step_alone  # the first token comes with the prefill
    batched = prefill + batched_decode / len(prompts)
    return {"prefill": prefill, "tokens": mean_tokens, "steps": steps, "step_alone": step_alone,
            "step_batched": batched_decode / max(steps, 1), "alone": alone, "batched": batched,
            "ceiling": alone / batched}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", nargs="?", default=None, help="a fine-tuned artifact instead of the base model")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the base model loaded without ARTIFACT")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    import torch

    from finetune_sdk.serve.__main__ import load_engine

    if args.threads:
        torch.set_num_threads(args.threads)
    engine = load_engine(args.artifact, None if args.artifact else args.model, "cpu")
    _, held_out = split_rows(load_rows("counsel-sample"), 0.2, 0, "topic")
    prompts = [engine.prompt_ids(row["questionText"]) for row in held_out[:args.rows]]
    prefix = len(engine.decode_batch().prefix.ids)
    print(f"{args.rows} prompts, mean {sum(map(len, prompts)) / len(prompts):.0f} tokens ({prefix} from the cached "
          f"prefix), {torch.get_num_threads()} torch threads")
    print(f"{'round':>5}{'prefill s':>11}{'tokens':>8}{'step(1) s':>11}{'step(B) s':>11}{'alone s/ans':>13}"
          f"{'batched s/ans':>15}{'ceiling':>9}")
    for n in range(args.rounds):
        r = one_round(engine, prompts)
        print(f"{n + 1:>5}{r['prefill']:>11.3f}{r['tokens']:>8.1f}{r['step_alone']:>11.3f}{r['step_batched']:>11.3f}"
              f"{r['alone']:>13.3f}{r['batched']:>15.3f}{r['ceiling']:>8.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
