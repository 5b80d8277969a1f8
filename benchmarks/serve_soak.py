"""Soak test of the HTTP server: many requests at high concurrency, every one answered, memory flat.

    python benchmarks/serve_soak.py [ARTIFACT] [--requests 10000] [--clients 64] [--max-new-tokens 4]

Without ARTIFACT a tiny random Llama (SmolLM2's tokenizer, 2 layers) is trained for one step into a
temporary folder, so the run measures the server, not the model. One server process
(``python -m finetune_sdk.serve``) takes all the requests; the script reports every status, requests
that got no answer at all ("lost"), whether the server is still alive, and its resident memory after
warm-up, at the peak and at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import httpx

from serve_load import RssSampler, ServerProcess, _rss_bytes, held_out_questions

WARMUP_REQUESTS = 200


def tiny_artifact(folder: Path) -> str:
    """A one-step LoRA artifact on a 2-layer random Llama that uses the embedded model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from finetune_sdk import FineTuner, PromptTemplate, TrainingSettings
    from finetune_sdk.backends.local import LocalBackend
    from finetune_sdk.models import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir("smollm2-135m-instruct"))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    template = PromptTemplate.chat(user="{questionText}", assistant="{topic}")
    tuner = FineTuner(str(folder / "model"), "counsel-sample", template, output_dir=folder / "artifact",
                      eval_fraction=0, backend=LocalBackend(in_process=True),
                      training=TrainingSettings(max_steps=1, progress=False))
    return str(tuner.train().path)


def soak(url: str, questions: list[str], *, requests: int, clients: int, max_new_tokens: int,
         timeout: float) -> tuple[Counter, int, float]:
    """Send ``requests`` requests from ``clients`` threads; return the statuses, the lost count and seconds."""
    statuses: Counter = Counter()
    lost = 0
    lock = threading.Lock()

    def one(i: int, client: httpx.Client) -> None:
        nonlocal lost
        body = {"inputs": questions[i % len(questions)], "parameters": {"max_new_tokens": max_new_tokens}}
        try:
            status = client.post(f"{url}/invocations", json=body, timeout=timeout).status_code
        except httpx.HTTPError:
            with lock:
                lost += 1
            return
        with lock:
            statuses[status] += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    with httpx.Client(limits=limits) as client, ThreadPoolExecutor(clients) as pool:
        started = time.monotonic()
        list(pool.map(lambda i: one(i, client), range(requests)))
        return statuses, lost, time.monotonic() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", nargs="?", default=None, help="default: a tiny artifact built for the run")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--request-timeout", type=float, default=600, help="client timeout per request, seconds")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="serve-soak-") as scratch:
        artifact = args.artifact or tiny_artifact(Path(scratch))
        questions = held_out_questions()
        with ServerProcess(artifact, ["--device", "cpu"], startup_timeout=300) as server:
            pid = server.process.pid
            soak(server.url, questions, requests=WARMUP_REQUESTS, clients=args.clients,
                 max_new_tokens=args.max_new_tokens, timeout=args.request_timeout)
            rss_before = _rss_bytes(pid) / 2**20
            with RssSampler(pid) as sampler:
                statuses, lost, seconds = soak(server.url, questions, requests=args.requests, clients=args.clients,
                                               max_new_tokens=args.max_new_tokens, timeout=args.request_timeout)
            rss_after = _rss_bytes(pid) / 2**20
            alive = server.process.poll() is None and httpx.get(f"{server.url}/ping", timeout=10).status_code == 200
    answered = sum(statuses.values())
    print(f"artifact {args.artifact or 'tiny random Llama (built for this run)'}; {args.requests} requests, "
          f"{args.clients} clients, max_new_tokens {args.max_new_tokens}")
    print(f"answered {answered}/{args.requests}, lost {lost}, statuses {dict(sorted(statuses.items()))}, "
          f"server alive afterwards: {alive}")
    print(f"{seconds:.1f} s, {answered / seconds:.1f} req/s")
    print(f"server RSS MB: after warm-up ({WARMUP_REQUESTS} requests) {rss_before:.0f}, peak "
          f"{sampler.peak_bytes / 2**20:.0f}, after {rss_after:.0f} ({rss_after - rss_before:+.0f})")
    return 0 if lost == 0 and alive and answered == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
