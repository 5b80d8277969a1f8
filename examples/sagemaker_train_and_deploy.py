"""The reference flow on AWS: fine-tune Qwen2.5-0.5B-Instruct on counsel-chat on an ml.g5.2xlarge training
instance, serve it from an ml.g5.xlarge endpoint, ask it two questions, then delete the endpoint.

    export FINETUNE_SDK_SAGEMAKER_ROLE=arn:aws:iam::<account>:role/<SageMaker execution role>
    export AWS_REGION=us-east-1
    python examples/sagemaker_train_and_deploy.py [model] [dataset] [output_dir]

With backend="local" and deployer="local" (the only two differences) the same script trains and serves
on this machine. What it costs and which IAM permissions it needs: docs/sagemaker.md.
"""

import sys

from finetune_sdk import FineTuner, PromptTemplate, TrainingSettings

args = sys.argv[1:]
MODEL = args[0] if len(args) > 0 else "Qwen/Qwen2.5-0.5B-Instruct"
DATASET = args[1] if len(args) > 1 else "nbertagnolli/counsel-chat"
OUTPUT_DIR = args[2] if len(args) > 2 else "runs/counsel-qwen"
QUESTIONS = ["I haven't slept properly since March.", "My brother keeps borrowing money and never pays it back."]

template = PromptTemplate.chat(
    system="You are a mental health assistant. Name the topic of the person's message.",
    user="{questionText}",
    assistant="Based on what you've described, this sounds like {topic}.",
)

tuner = FineTuner(
    MODEL,
    DATASET,
    template,
    output_dir=OUTPUT_DIR,
    stratify="topic",
    backend="sagemaker",
    training=TrainingSettings(epochs=2, learning_rate=2e-4, progress=False),
)
artifact = tuner.train()
print(f"job {tuner.job.id} {tuner.job.status}: eval_loss={artifact.metrics['eval_loss']:.3f}, "
      f"{artifact.metrics['steps']} steps")

with tuner.deploy(deployer="sagemaker") as predictor:
    for question in QUESTIONS:
        print(f"{question}\n  -> {predictor.predict(question, max_new_tokens=24).text}")
