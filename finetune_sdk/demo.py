"""The demo: fine-tune the embedded model on the bundled data and show what changed.

Prints the masking preview, then the base model's and the fine-tuned model's answers on held-out
questions and their topic accuracy. ``finetune-sdk demo`` runs it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .evaluate import extract_label, label_accuracy
from .models import DEFAULT_MODEL
from .predict import Predictor
from .spec import LoraSettings, TrainingSettings
from .template import PromptTemplate
from .tuner import FineTuner

COUNSEL_TEMPLATE = PromptTemplate.chat(
    system="You are a mental health assistant. Name the topic of the person's message.",
    user="{questionText}",
    assistant="Based on what you've described, this sounds like {topic}.",
)


# Measured on a 2-core CPU (docs/local-training.md): adapting the top 15 of SmolLM2's 30 layers with
# the frozen-layer cache trains twice as fast per epoch as all layers, and 3 epochs of it match or beat
# 2 epochs on all layers in held-out accuracy in less time.
DEMO_LORA = LoraSettings(r=16, alpha=32, layers=list(range(15, 30)))


def run_demo(output_dir: str | Path = "runs/demo", *, epochs: float = 3.0, learning_rate: float = 1e-3,
             eval_fraction: float = 0.2, show: int = 4, seed: int = 0, batch_size: int = 8) -> dict[str, Any]:
    """Train, compare base vs tuned on the held-out split, print a report and return the numbers."""
    started = time.perf_counter()
    tuner = FineTuner(DEFAULT_MODEL, "counsel-sample", COUNSEL_TEMPLATE, output_dir=output_dir,
                      eval_fraction=eval_fraction, stratify="topic", seed=seed, lora=DEMO_LORA,
                      training=TrainingSettings(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size))
    held_out = tuner.eval_rows
    topics = sorted({r["topic"] for r in tuner.train_rows + held_out})
    print(f"model {DEFAULT_MODEL}; {len(tuner.train_rows)} training rows, {len(held_out)} held-out rows, "
          f"{len(topics)} topics\n")
    tuner.preview(1)

    questions = [{"questionText": r["questionText"]} for r in held_out]
    truths = [r["topic"] for r in held_out]
    with Predictor.base_model(DEFAULT_MODEL, COUNSEL_TEMPLATE) as base:
        before = _answers(base, questions)

    print("\ntraining ...")
    artifact = tuner.train()
    with tuner.deploy() as tuned:
        after = _answers(tuned, questions)

    base_acc = label_accuracy(before, truths, topics)
    tuned_acc = label_accuracy(after, truths, topics)
    for row, b, a in list(zip(held_out, before, after))[:show]:
        print(f"\nQ: {row['questionText'][:160]}{'...' if len(row['questionText']) > 160 else ''}")
        print(f"   true topic: {row['topic']}")
        print(f"   base  : {b[:120]}")
        print(f"   tuned : {a[:120]}")
    stopped = sum(extract_label(a, topics) is not None for a in after)
    metrics = artifact.metrics
    print(f"\nheld-out topic accuracy ({len(held_out)} questions): base {base_acc:.1%} -> tuned {tuned_acc:.1%}")
    print(f"tuned answers naming a known topic: {stopped}/{len(after)}")
    print(f"\ntraining: {metrics['steps']} steps in {metrics['train_seconds']:.0f} s, "
          f"{metrics['real_tokens_per_second']:.0f} real tokens/s, padding efficiency "
          f"{metrics['padding_efficiency']:.2f}, eval loss {metrics['eval_loss']:.3f}")
    print(f"artifact: {artifact.path}\ndemo wall time: {time.perf_counter() - started:.0f} s")
    return {"base_accuracy": base_acc, "tuned_accuracy": tuned_acc, "metrics": metrics,
            "artifact": str(artifact.path)}


def _answers(predictor: Predictor, questions: list[dict[str, str]]) -> list[str]:
    return [p.text for p in predictor.predict_batch(questions, max_new_tokens=24)]
