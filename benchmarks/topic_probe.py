"""How well the frozen base model's features already separate the demo's topics: a ceiling check.

Each held-out and training question is encoded exactly as the demo prompts it (the SDK's Encoder and
the demo's template), run once through the embedded model, and mean-pooled over its prompt tokens at
every layer. An L2-regularised logistic regression (LBFGS) is fitted on the demo's training split and
scored on its held-out split, for:

- one layer at a time (every third layer),
- all layers' pooled states side by side,
- the best single layer trained on 25/50/75/100% of the training rows (how much more data would buy).

This is not a deployable classifier (the SDK's artifacts answer in text); it tells you how much topic
information the model's frozen features hold, to compare with the fine-tuned model's accuracy.

    python benchmarks/topic_probe.py [--threads 2] [--layer 18]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace

import torch


def pooled_states(model, encoder, rows) -> torch.Tensor:
    """(rows, layers + 1, hidden): every layer's hidden state, averaged over the prompt's tokens."""
    out = []
    with torch.inference_mode():
        for row in rows:
            ids = torch.tensor([encoder.encode_prompt({"questionText": row["questionText"]})])
            states = model(input_ids=ids, output_hidden_states=True).hidden_states
            out.append(torch.stack([h[0].mean(0) for h in states]))
    return torch.stack(out)


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                   l2: float = 1e-2) -> float:
    """Held-out accuracy of a standardised, L2-regularised multinomial logistic regression."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-5
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(0)
    linear = torch.nn.Linear(train_x.shape[1], int(train_y.max()) + 1)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=300)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(train_x), train_y) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float((linear(test_x).argmax(1) == test_y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layer", type=int, default=18, help="the layer of the training-size curve")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from finetune_sdk.demo import COUNSEL_TEMPLATE, demo_tuner
    from finetune_sdk.encoding import Encoder
    from finetune_sdk.models import DEFAULT_MODEL, load_model, load_tokenizer, resolve_model

    tuner = demo_tuner()  # the demo's own split
    train, held_out = tuner.train_rows, tuner.eval_rows
    ref = resolve_model(DEFAULT_MODEL)
    model = load_model(ref, dtype=torch.float32).eval()
    # the question's text alone, as the demo prompted before it added titles (docs/local-training.md)
    encoder = Encoder(load_tokenizer(ref), replace(COUNSEL_TEMPLATE, user="{questionText}", optional=()))
    topics = sorted({r["topic"] for r in train})
    train_y = torch.tensor([topics.index(r["topic"]) for r in train])
    test_y = torch.tensor([topics.index(r["topic"]) for r in held_out])

    started = time.perf_counter()
    train_x, test_x = pooled_states(model, encoder, train), pooled_states(model, encoder, held_out)
    print(f"{len(train)} training rows, {len(held_out)} held-out rows; features in "
          f"{time.perf_counter() - started:.0f} s\n")

    result: dict[str, object] = {"per_layer": {}, "training_rows": {}}
    print("| features (mean-pooled prompt states) | held-out accuracy |\n|---|---:|")
    for layer in range(0, train_x.shape[1], 3):
        acc = probe_accuracy(train_x[:, layer], train_y, test_x[:, layer], test_y)
        result["per_layer"][layer] = acc
        print(f"| layer {layer} | {acc:.1%} |")
    result["all_layers"] = probe_accuracy(train_x.flatten(1), train_y, test_x.flatten(1), test_y)
    print(f"| all {train_x.shape[1]} layers side by side | {result['all_layers']:.1%} |")

    print(f"\n| training rows (layer {args.layer}, 3 random subsets) | held-out accuracy |\n|---:|---|")
    for fraction in (0.25, 0.5, 0.75, 1.0):
        rows, accs = int(fraction * len(train)), []
        for seed in range(3 if fraction < 1 else 1):
            order = list(range(len(train)))
            random.Random(seed).shuffle(order)
            pick = torch.tensor(order[:rows])
            accs.append(probe_accuracy(train_x[pick, args.layer], train_y[pick], test_x[:, args.layer], test_y))
        result["training_rows"][rows] = accs
        print(f"| {rows} | {', '.join(f'{a:.1%}' for a in accs)} |")
    print("\n" + json.dumps(result))


if __name__ == "__main__":
    main()
