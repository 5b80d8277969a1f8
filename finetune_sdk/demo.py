"""The demo: fine-tune the embedded model on the bundled data and show what changed.

Prints the masking preview and the training estimate, then compares the base model with the
fine-tuned one on held-out questions (topic accuracy, confusion matrix, stop-token rate) and writes
that report, with a PNG chart, next to the artifact. ``finetune-sdk demo`` runs it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .evaluate import compare
from .models import DEFAULT_MODEL
from .spec import LoraSettings, TrainingSettings
from .template import PromptTemplate
from .tuner import FineTuner

#: The question's title, when it has one, then its text: a title often says in a few words what the text
#: circles around, and a question without one (``predict("...")``) is the text alone.
COUNSEL_TEMPLATE = PromptTemplate.chat(
    system="You are a mental health assistant. Name the topic of the person's message.",
    user="{questionTitle}\n\n{questionText}",
    assistant="Based on what you've described, this sounds like {topic}.",
    optional=["questionTitle"],
)


# Measured on a 2-core CPU (docs/local-training.md): with the frozen-layer cache, adapting the top 10
# of SmolLM2's 30 layers costs a third of all layers per epoch, and 3 epochs of it match the held-out
# accuracy of adapting 15, 20 or all 30 layers; a 3rd epoch adds about 4 points, a 4th nothing. With the
# titles in the prompt, r=64 beats r=16 by about 4 points on both the held-out and the independent questions.
DEMO_LORA = LoraSettings(r=64, alpha=128, layers=list(range(20, 30)))
#: Replies are one sentence; 24 new tokens leave room for it and its end-of-turn token.
MAX_NEW_TOKENS = 24
#: Questions per generation batch: a decode step for 32 rows costs far less than four steps for 8
#: (about 1.3x a 16-row step on a CPU), so fewer, fuller batches finish the held-out split sooner.
EVAL_BATCH = 32
#: The tuned model must name the right topic at least 20 points more often than the base model.
DEMO_GATE = {"label_accuracy": 0.20}


def demo_tuner(output_dir: str | Path = "runs/demo", *, epochs: float = 3.0, learning_rate: float = 1e-3,
               eval_fraction: float = 0.2, seed: int = 0, batch_size: int = 8) -> FineTuner:
    """The demo's FineTuner: the embedded model on the bundled data, split by topic (its ``eval_rows`` are the
    held-out questions every demo number is measured on). The demo scores them by the topic the model names,
    so the training program skips their loss (``eval_loss="off"``), which would only add time."""
    return FineTuner(DEFAULT_MODEL, "counsel-sample", COUNSEL_TEMPLATE, output_dir=output_dir,
                     eval_fraction=eval_fraction, stratify="topic", seed=seed, lora=DEMO_LORA,
                     training=TrainingSettings(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                                               eval_loss="off"))


def run_demo(output_dir: str | Path = "runs/demo", *, epochs: float = 3.0, learning_rate: float = 1e-3,
             eval_fraction: float = 0.2, show: int = 4, seed: int = 0, batch_size: int = 8) -> dict[str, Any]:
    """Estimate, train, compare base vs tuned on the held-out split, print a report and return the numbers.

    The comparison is also written next to the artifact: ``<output_dir>.comparison.{md,json,png}``.
    """
    started = time.perf_counter()
    tuner = demo_tuner(output_dir, epochs=epochs, learning_rate=learning_rate, eval_fraction=eval_fraction,
                       seed=seed, batch_size=batch_size)
    held_out = tuner.eval_rows
    topics = sorted({r["topic"] for r in tuner.train_rows + held_out})
    print(f"model {DEFAULT_MODEL}; {len(tuner.train_rows)} training rows, {len(held_out)} held-out rows, "
          f"{len(topics)} topics\n")
    tuner.preview(1)

    print("\nestimating (timing a few real training steps) ...")
    estimate = tuner.estimate()
    print(estimate)
    base = tuner.evaluate("base", label_column="topic", max_new_tokens=MAX_NEW_TOKENS,
                           batch_size=EVAL_BATCH)

    print("\ntraining ...")
    train_started = time.perf_counter()
    artifact = tuner.train()
    job_seconds = time.perf_counter() - train_started
    tuned = tuner.evaluate(artifact, label_column="topic", max_new_tokens=MAX_NEW_TOKENS,
                           batch_size=EVAL_BATCH)
    comparison = compare(base, tuned, gate=DEMO_GATE)
    for row, b, a in list(zip(held_out, base.records, tuned.records))[:show]:
        question = f"[{row['questionTitle']}] {row['questionText']}" if row.get("questionTitle") else row["questionText"]
        print(f"\nQ: {question[:160]}{'...' if len(question) > 160 else ''}")
        print(f"   true topic: {row['topic']}")
        print(f"   base  : {b.prediction[:120]}")
        print(f"   tuned : {a.prediction[:120]}")
    print(f"\n{comparison.table()}")
    paths = comparison.save(artifact.path.parent, stem=f"{artifact.path.name}.comparison")
    metrics = artifact.metrics
    print(f"training: {metrics['steps']} steps in {metrics['train_seconds']:.0f} s (estimated "
          f"{estimate.training.train_seconds:.0f} s), the whole job {job_seconds:.0f} s (estimated "
          f"{estimate.training.total_seconds:.0f} s); {metrics['real_tokens_per_second']:.0f} real tokens/s, "
          f"padding efficiency {metrics['padding_efficiency']:.2f}")
    print(f"artifact: {artifact.path}\nreport: {paths['markdown']}, {paths['png']}\n"
          f"demo wall time: {time.perf_counter() - started:.0f} s")
    return {"base_accuracy": base.metrics["label_accuracy"], "tuned_accuracy": tuned.metrics["label_accuracy"],
            "metrics": metrics, "artifact": str(artifact.path), "passed": comparison.passed,
            "estimated_train_seconds": estimate.training.train_seconds, "job_seconds": job_seconds,
            "estimated_job_seconds": estimate.training.total_seconds, "report": {k: str(v) for k, v in paths.items()}}
