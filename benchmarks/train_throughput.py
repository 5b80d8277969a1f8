"""Training throughput, side by side on the same rows, model and adapter: reference recipe, TRL, finetune_sdk.

- reference recipe (the common LoRA tutorial shape): the chat template rendered to text, padded to
  512 tokens, labels from DataCollatorForLanguageModeling, batch 4, Hugging Face Trainer;
- TRL's SFTTrainer: prompt/completion rows, best-fit-decreasing packing (padding-free), completion-only
  loss; bf16 and Liger kernels on CUDA when installed, fp32 and no gradient checkpointing on CPU;
- finetune_sdk's default: the SDK's own training program (``finetune_sdk.train.program.run``) with
  ``TrainingSettings()`` except batch size and learning rate, which every recipe shares.

Every recipe trains one pass over the same ``--examples`` rows (so the same tokens) in its own child
process, then the same evaluator scores the same held-out rows (loss per completion token).

    python benchmarks/train_throughput.py [--examples 64] [--eval-rows 48] [--demo]
                                          [--record throughput.json --where ml.g5.xlarge]

On CPU the model is the embedded SmolLM2-135M-Instruct with the default LoRA (all linear layers,
r=16). On CUDA it is a Qwen1.5-0.5B-shaped Qwen2 model built from its config (random init, bf16,
tied embeddings, vocab 151936; no download) with LoRA r=8/alpha 16 on q, k, v, o, and the SmolLM2
ChatML tokenizer. ``--demo`` (CPU) gives every recipe the demo's adapter instead (r=64 on all linear
layers of the top 10 layers; finetune_sdk adds its frozen-layer cache, as the demo does) and the demo's
prompt (each question's title, then its text). Prints JSON: real (non-pad) tokens/s (the first step of each recipe is not timed;
for finetune_sdk the program's own clock less its recorded first step, with the first-step-included
rate beside it), peak memory (CUDA: allocated by torch;
CPU: the child process's peak RSS), final eval loss and the ratios.

``--record`` adds finetune_sdk's tokens/s to a throughput table, ``{where: {model: tokens/s}}``, that
``FineTuner.estimate(where, throughput="throughput.json")`` reads.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from finetune_sdk.data import load_rows, write_jsonl
from finetune_sdk.demo import COUNSEL_TEMPLATE as DEMO_TEMPLATE
from finetune_sdk.demo import DEMO_LORA
from finetune_sdk.encoding import Encoder, encode_dataset
from finetune_sdk.models import load_model, load_tokenizer, resolve_model

#: The demo's prompt on the question's text alone, without its title: the rows docs/benchmarks.md was measured on.
COUNSEL_TEMPLATE = replace(DEMO_TEMPLATE, user="{questionText}", optional=())

CPU = {"model": "smollm2-135m-instruct", "lora": {"r": 16, "alpha": 32, "target_modules": "all-linear"},
       "batch_size": 8, "trl_batch_size": 2, "template": COUNSEL_TEMPLATE}
#: ``--demo``: the demo's adapter (top 10 layers; finetune_sdk adds its frozen-layer cache) and prompt (title, then text).
#: "all-linear" spelled out: PEFT takes layers_to_transform only with a list of module names.
DEMO = {**CPU, "lora": {"r": DEMO_LORA.r, "alpha": DEMO_LORA.alpha, "layers": DEMO_LORA.layers,
                        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
        "template": DEMO_TEMPLATE}
CUDA = {"lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "batch_size": 64, "trl_batch_size": 16, "template": COUNSEL_TEMPLATE}
QWEN_0_5B = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
                 intermediate_size=2816, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096)
LEARNING_RATE = 2e-4
PEAK_BF16_FLOPS = 989e12  # H100/H200 SXM dense bf16


def _flops_per_token() -> float:
    """6 x parameters (head included) + causal attention at the median length: the usual MFU count."""
    h, layers, v, ffn = (QWEN_0_5B[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"))
    params = layers * (4 * h * h + 3 * h * ffn) + v * h
    return 6 * params + 6 * layers * h * 150


def qwen_shaped_model(folder: Path) -> str:
    """A random-init Qwen1.5-0.5B-shaped model (bf16) with the embedded ChatML tokenizer, saved to ``folder``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = load_tokenizer(resolve_model(CPU["model"]))
    config = Qwen2Config(**QWEN_0_5B, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _peft(model: Any, lora: dict[str, Any]) -> Any:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, _peft_config(lora))


def _dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def _peak_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _eval_loss(model: Any, tokenizer: Any, eval_rows: list[dict], template: Any) -> float | None:
    from finetune_sdk.train.program import evaluate_loss

    examples, _ = encode_dataset(Encoder(tokenizer, template), eval_rows)
    device = next(model.parameters()).device
    return evaluate_loss(model, examples, tokenizer.pad_token_id, device, _dtype())


class _Clocked:
    """A Trainer callback and a data-collator wrapper: step times and real tokens per step."""

    def __init__(self, collator: Any) -> None:
        self.collator, self.times, self.tokens = collator, [], []

    def __call__(self, features: list) -> dict:
        batch = self.collator(features)
        mask = batch.get("attention_mask")
        self.tokens.append(int(mask.sum()) if mask is not None else batch["input_ids"].numel())
        return batch

    def callback(self) -> Any:
        from transformers import TrainerCallback

        clock = self

        class Clock(TrainerCallback):
            def on_step_begin(self, *a: Any, **k: Any) -> None:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                clock.times.append(time.perf_counter())

            def on_step_end(self, *a: Any, **k: Any) -> None:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                clock.times[-1] = time.perf_counter() - clock.times[-1]

        return Clock()

    def result(self) -> dict[str, float]:
        steps = min(len(self.times), len(self.tokens))
        seconds = sum(self.times[1:steps])  # the first step warms up
        return {"real_tokens_per_s": sum(self.tokens[1:steps]) / seconds, "steps": steps, "timed_seconds": seconds}


def _trainer_args(out: str, batch_size: int, steps: int) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return dict(output_dir=out, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=LEARNING_RATE,
                report_to=[], save_strategy="no", logging_strategy="no", use_cpu=not cuda, bf16=cuda,
                dataloader_num_workers=0, seed=0, warmup_steps=0, lr_scheduler_type="constant")


def reference_recipe(model_ref: str, setup: dict, train_rows: list[dict], eval_rows: list[dict]) -> dict:
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    ref = resolve_model(model_ref)
    tokenizer = load_tokenizer(ref)
    texts = [tokenizer.apply_chat_template(setup["template"].conversation(r), tokenize=False) for r in train_rows]
    data = Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"], padding="max_length", max_length=512, truncation=True),
        batched=True, remove_columns=["text"])
    clock = _Clocked(DataCollatorForLanguageModeling(tokenizer, mlm=False))
    model = _peft(load_model(ref, dtype=_dtype()), setup["lora"])
    if torch.cuda.is_available():
        model.cuda()
    args = TrainingArguments(**_trainer_args("/tmp/finetune_sdk_bench_reference", 4, len(train_rows) // 4))
    Trainer(model=model, args=args, train_dataset=data, data_collator=clock, callbacks=[clock.callback()]).train()
    return {**clock.result(), "peak_gib": _peak_gib(),
            "eval_loss": _eval_loss(model, tokenizer, eval_rows, setup["template"])}


def trl_sft(model_ref: str, setup: dict, train_rows: list[dict], eval_rows: list[dict]) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    ref = resolve_model(model_ref)
    tokenizer = load_tokenizer(ref)
    cuda = torch.cuda.is_available()
    liger = cuda and _installed("liger_kernel")
    conversations = [setup["template"].conversation(r) for r in train_rows]
    data = Dataset.from_list([{"prompt": c[:-1], "completion": c[-1:]} for c in conversations])
    model = load_model(ref, dtype=_dtype())
    if cuda:
        model.cuda()
    args = SFTConfig(**_trainer_args("/tmp/finetune_sdk_bench_trl", setup["trl_batch_size"], 10**6),
                     packing=True, packing_strategy="bfd", max_length=512, completion_only_loss=True,
                     gradient_checkpointing=False, use_liger_kernel=liger)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=_peft_config(setup["lora"]))
    clock = _Clocked(trainer.data_collator)
    trainer.data_collator = clock
    trainer.args.max_steps = math.ceil(len(trainer.train_dataset) / setup["trl_batch_size"])  # one pass
    trainer.add_callback(clock.callback())
    trainer.train()
    return {**clock.result(), "peak_gib": _peak_gib(),
            "eval_loss": _eval_loss(trainer.model, tokenizer, eval_rows, setup["template"]), "liger": liger}


def finetune_sdk_default(model_ref: str, setup: dict, train_rows: list[dict], eval_rows: list[dict]) -> dict:
    from finetune_sdk.data import fingerprint
    from finetune_sdk.spec import DataRef, JobSpec
    from finetune_sdk.train.program import run

    folder = Path(tempfile.mkdtemp(prefix="finetune_sdk_bench_"))
    write_jsonl(train_rows, folder / "train.jsonl")
    write_jsonl(eval_rows, folder / "eval.jsonl")
    data = DataRef(train_path=str(folder / "train.jsonl"), eval_path=str(folder / "eval.jsonl"),
                   fingerprint=fingerprint(train_rows + eval_rows), train_rows=len(train_rows),
                   eval_rows=len(eval_rows))
    spec = JobSpec(model=model_ref, template=setup["template"].to_dict(), data=data, lora=setup["lora"],
                   training={"epochs": 1, "batch_size": setup["batch_size"], "learning_rate": LEARNING_RATE,
                             "warmup_ratio": 0, "lr_scheduler": "constant", "progress": False},
                   output_dir=str(folder / "artifact"), max_length=512)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    run(spec)
    metrics = json.loads((folder / "artifact" / "finetune_sdk.json").read_text())["metrics"]
    first = metrics["first_step"] if metrics["steps"] > 1 else {"seconds": 0.0, "real_tokens": 0}
    seconds = metrics["train_seconds"] - first["seconds"]  # the first step warms up, as for the others
    return {"real_tokens_per_s": (metrics["real_tokens"] - first["real_tokens"]) / seconds, "steps": metrics["steps"],
            "timed_seconds": seconds, "with_first_step_real_tokens_per_s": metrics["real_tokens_per_second"], "peak_gib": _peak_gib(), "eval_loss": metrics["eval_loss"],
            "packing": metrics["packing"], "tokens_per_micro_batch": metrics["tokens_per_micro_batch"]}


def _peft_config(lora: dict[str, Any]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=0.0, target_modules=lora["target_modules"],
                      layers_to_transform=lora.get("layers"), task_type="CAUSAL_LM")


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _in_child(recipe: Any, *args: Any) -> dict:
    """Run one recipe in a fresh process: its own peak memory, nothing left over from the others."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(recipe, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, help="training rows each recipe passes over once "
                        "(default: 64 on CPU, 4096 on CUDA, the bundled rows repeated)")
    parser.add_argument("--eval-rows", type=int, default=48, help="held-out rows scored after training")
    parser.add_argument("--recipes", default="finetune_sdk,trl,reference")
    parser.add_argument("--model", help="on CPU: another model name or folder (default: the embedded SmolLM2)")
    parser.add_argument("--demo", action="store_true", help="on CPU: the demo's adapter and prompt for every recipe")
    parser.add_argument("--record", help="a JSON throughput table to add finetune_sdk's result to")
    parser.add_argument("--where", help="the table key for this machine, e.g. an instance type (with --record)")
    args = parser.parse_args()
    if args.record and not args.where:
        parser.error("--record needs --where, the name this machine gets in the table")
    cuda = torch.cuda.is_available()
    setup = CUDA if cuda else DEMO if args.demo else CPU
    rows = load_rows("counsel-sample")
    examples = args.examples or (4096 if cuda else 64)
    eval_rows, pool = rows[:args.eval_rows], rows[args.eval_rows:]
    train_rows = (pool * (1 + examples // len(pool)))[:examples]
    model_ref = qwen_shaped_model(Path(tempfile.mkdtemp(prefix="qwen05b_"))) if cuda else args.model or setup["model"]
    recipes = {"finetune_sdk": finetune_sdk_default, "trl": trl_sft, "reference": reference_recipe}
    results = {}
    for name in args.recipes.split(","):
        results[name] = _in_child(recipes[name], model_ref, setup, train_rows, eval_rows)
        print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)  # progress while the others run
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores)",
        "model": "Qwen1.5-0.5B-shaped (random init, bf16)" if cuda else model_ref,
        "lora": setup["lora"], "template": setup["template"].to_dict(), "examples": len(train_rows),
        "eval_rows": len(eval_rows), **results}
    if cuda:
        for result in results.values():
            result["mfu"] = round(result["real_tokens_per_s"] * _flops_per_token() / PEAK_BF16_FLOPS, 3)
    ours = results.get("finetune_sdk", {}).get("real_tokens_per_s")
    for other in ("trl", "reference"):
        if ours and other in results:
            report[f"finetune_sdk_vs_{other}"] = round(ours / results[other]["real_tokens_per_s"], 2)
    print(json.dumps(report, indent=2))
    if args.record and ours:
        record(Path(args.record), args.where, report["model"], ours)


def record(path: Path, where: str, model: str, tokens_per_s: float) -> None:
    """Merge one measurement into the throughput table at ``path`` (created when missing)."""
    table = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    table.setdefault(where, {})[model] = round(tokens_per_s, 1)
    path.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
