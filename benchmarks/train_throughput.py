"""Training throughput: finetune_sdk's default pipeline vs the reference recipe, same data, one run.

The reference recipe (the common LoRA tutorial shape): every example rendered with the chat template,
padded to 512 tokens, labels rebuilt by DataCollatorForLanguageModeling, batch 4, Hugging Face
Trainer. finetune_sdk: completion-only labels, length-grouped dynamic padding, loss head only on
trained positions, batch 8. Both use the same model, the same LoRA adapter and the same rows.

    python benchmarks/train_throughput.py [--steps 8] [--model smollm2-135m-instruct]
                                          [--record throughput.json --where ml.g5.xlarge]

Prints real (non-pad) tokens/s, the share of real tokens in each batch, and the speed-up ratio.
``--record`` adds finetune_sdk's tokens/s to a throughput table, ``{where: {model: tokens/s}}``, that
``FineTuner.estimate(where, throughput="throughput.json")`` reads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from finetune_sdk.data import load_rows
from finetune_sdk.demo import COUNSEL_TEMPLATE
from finetune_sdk.encoding import Encoder, encode_dataset
from finetune_sdk.models import load_model, load_tokenizer, resolve_model
from finetune_sdk.spec import LoraSettings
from finetune_sdk.train.batching import collate, epoch_batches
from finetune_sdk.train.loss import completion_loss


def lora(model, settings: LoraSettings):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                                            target_modules=settings.target_modules, task_type="CAUSAL_LM"))


def reference_recipe(ref, tokenizer, rows, steps: int, settings: LoraSettings) -> dict:
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    texts = [tokenizer.apply_chat_template(COUNSEL_TEMPLATE.conversation(r), tokenize=False) for r in rows]
    data = Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"], padding="max_length", max_length=512, truncation=True),
        batched=True, remove_columns=["text"])
    real = sum(sum(m) for m in data["attention_mask"][: steps * 4])
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            times.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            times[-1] = time.perf_counter() - times[-1]

    model = lora(load_model(ref, dtype=torch.float32), settings)
    args = TrainingArguments(output_dir="/tmp/finetune_sdk_bench_reference", per_device_train_batch_size=4,
                             max_steps=steps + 1, learning_rate=2e-4, report_to=[], save_strategy="no",
                             logging_strategy="no", use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
                             seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), callbacks=[Clock()])
    trainer.train()
    seconds = sum(times[1:])  # the first step warms up
    real_steps = sum(sum(m) for m in data["attention_mask"][4: 4 * (steps + 1)])
    return {"real_tokens_per_s": real_steps / seconds, "real_token_share": real / (steps * 4 * 512),
            "seconds": seconds}


def finetune_sdk_default(ref, tokenizer, rows, steps: int, settings: LoraSettings, batch_size: int = 8) -> dict:
    examples, _ = encode_dataset(Encoder(tokenizer, COUNSEL_TEMPLATE), rows)
    batches = epoch_batches([len(e.input_ids) for e in examples], batch_size, seed=0, epoch=0)[: steps + 1]
    model = lora(load_model(ref, dtype=torch.float32), settings)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    seconds = real = padded = 0.0
    for i, idx in enumerate(batches):
        batch = collate([examples[j] for j in idx], tokenizer.pad_token_id)
        start = time.perf_counter()
        loss, n = completion_loss(model, batch)
        (loss / n).backward()
        optimizer.step()
        optimizer.zero_grad()
        if i:  # the first step warms up
            seconds += time.perf_counter() - start
            real += int(batch["attention_mask"].sum())
            padded += batch["input_ids"].numel()
    return {"real_tokens_per_s": real / seconds, "real_token_share": real / padded, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per recipe (after one warm-up step)")
    parser.add_argument("--record", help="a JSON throughput table to add this machine's result to")
    parser.add_argument("--where", help="the table key for this machine, e.g. an instance type (with --record)")
    args = parser.parse_args()
    if args.record and not args.where:
        parser.error("--record needs --where, the name this machine gets in the table")
    torch.manual_seed(0)
    ref = resolve_model(args.model)
    tokenizer = load_tokenizer(ref)
    rows = load_rows("counsel-sample")
    settings = LoraSettings()
    ours = finetune_sdk_default(ref, tokenizer, rows, args.steps, settings)
    reference = reference_recipe(ref, tokenizer, rows, args.steps, settings)
    report = {"model": args.model, "device": "cuda" if torch.cuda.is_available() else "cpu",
              "threads": torch.get_num_threads(), "lora": settings.model_dump(), "steps": args.steps,
              "reference_recipe": reference, "finetune_sdk": ours,
              "speedup_real_tokens_per_s": ours["real_tokens_per_s"] / reference["real_tokens_per_s"]}
    print(json.dumps(report, indent=2))
    if args.record:
        record(Path(args.record), args.where, args.model, ours["real_tokens_per_s"])


def record(path: Path, where: str, model: str, tokens_per_s: float) -> None:
    """Merge one measurement into the throughput table at ``path`` (created when missing)."""
    table = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    table.setdefault(where, {})[model] = round(tokens_per_s, 1)
    path.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
