"""Fine-tune the embedded SmolLM2-135M-Instruct on the bundled counselling sample, offline, on a CPU.

    python examples/quickstart.py

Takes about 10 minutes on 2 CPU cores (seconds on a GPU). Prints the masking preview, a few answers
to held-out questions, and the artifact's metrics.
"""

from finetune_sdk import FineTuner, LoraSettings, PromptTemplate, TrainingSettings

template = PromptTemplate.chat(
    system="You are a mental health assistant. Name the topic of the person's message.",
    user="{questionTitle}\n\n{questionText}",  # the title, when a question has one, then its text
    assistant="Based on what you've described, this sounds like {topic}.",
    optional=["questionTitle"],
)

tuner = FineTuner(
    "smollm2-135m-instruct",
    "counsel-sample",
    template,
    output_dir="runs/quickstart",
    eval_fraction=0.2,
    stratify="topic",
    lora=LoraSettings(layers=list(range(15, 30))),  # top half of the 30 layers: twice as fast on a CPU
    training=TrainingSettings(epochs=3, learning_rate=1e-3),
)
tuner.preview(1)
artifact = tuner.train()

with tuner.deploy() as predictor:
    for row in tuner.eval_rows[:5]:
        question = {"questionTitle": row["questionTitle"], "questionText": row["questionText"]}
        answer = predictor.predict(question, max_new_tokens=24)
        print(f"[{row['topic']}] {row['questionText'][:70]}...\n  -> {answer.text}")

print({k: artifact.metrics[k] for k in ("eval_loss", "steps", "train_seconds", "real_tokens_per_second")})
