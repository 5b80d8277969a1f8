"""The reference story on the Hugging Face Hub: Qwen1.5-0.5B-Chat on counsel-chat (needs network).

    python examples/counsel_chat_hub.py

Same code as the quickstart; only the model and dataset names change. On a GPU, bf16 is picked
automatically. Set HF_TOKEN if the model or dataset needs it.
"""

from finetune_sdk import FineTuner, PromptTemplate, TrainingSettings

template = PromptTemplate.chat(
    system="You are a mental health assistant. Name the topic of the person's message.",
    user="{questionTitle}\n\n{questionText}",  # the title, when a question has one, then its text
    assistant="Based on what you've described, this sounds like {topic}.",
    optional=["questionTitle"],
)

tuner = FineTuner(
    "Qwen/Qwen1.5-0.5B-Chat",
    "nbertagnolli/counsel-chat",  # columns: questionTitle, questionText, topic, answerText, ...
    template,
    output_dir="runs/qwen-counsel",
    stratify="topic",
    training=TrainingSettings(epochs=2, learning_rate=2e-4, merge=True),
)
print(tuner.report)  # rows dropped for empty fields, per column
artifact = tuner.train()
with tuner.deploy() as predictor:
    print(predictor.predict("I can't stop checking my partner's phone and I hate myself for it.").text)
