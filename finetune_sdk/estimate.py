"""What a job will cost before it runs: tokens, steps, wall time, dollars; and serving vs a hosted API.

Wall time comes from a short probe of the real training steps on this machine (``probe=True``, the
default for local jobs) or from a throughput table of real tokens per second (what
``benchmarks/train_throughput.py --record`` writes; the only way for remote instance types). Dollars
come from a dated SageMaker price table that the caller can override with their own prices.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import ConfigError

#: SageMaker on-demand prices, USD per instance-hour, us-east-1 (training and real-time inference are
#: billed alike for these types). Prices change: pass ``prices=`` with your own region's and date's.
PRICES_AS_OF = "2024-06, us-east-1 on-demand"
SAGEMAKER_PRICES: dict[str, float] = {
    "ml.m5.xlarge": 0.23, "ml.c5.2xlarge": 0.408, "ml.g4dn.xlarge": 0.736, "ml.g5.xlarge": 1.408,
    "ml.g5.2xlarge": 1.515, "ml.g5.12xlarge": 7.09, "ml.p3.2xlarge": 3.825, "ml.p4d.24xlarge": 37.688,
}

#: Real (non-pad) training tokens per second, by where it ran and model; measured by the benchmarks
#: (the SDK pipeline, LoRA r=16 on all linear layers, batch 8). Add rows with ``throughput=``.
THROUGHPUT: dict[str, dict[str, float]] = {
    "local-cpu-2core": {"smollm2-135m-instruct": 302.1},
}

#: Requests per second an endpoint sustains, measured with ``benchmarks/serve_load.py`` (32 clients,
#: 32 new tokens at most, the demo artifact, batching on).
SERVING_THROUGHPUT: dict[str, dict[str, float]] = {
    "local-cpu-2core": {"smollm2-135m-instruct": 1.95},
}

HOURS_PER_MONTH = 730


@dataclass
class TrainingEstimate:
    """Sizes of the job and its predicted time and price."""

    examples: int
    epochs: float
    steps: int
    real_tokens_per_epoch: int
    trained_tokens_per_epoch: int
    padded_tokens_per_epoch: int
    where: str
    method: str  # "probe" or "table"
    setup_seconds: float
    train_seconds: float
    eval_seconds: float = 0.0
    price_per_hour: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return self.setup_seconds + self.train_seconds + self.eval_seconds

    @property
    def dollars(self) -> float | None:
        return None if self.price_per_hour is None else self.price_per_hour * self.total_seconds / 3600

    def lines(self) -> list[str]:
        out = [f"training data: {self.examples} examples, {self.real_tokens_per_epoch:,} tokens per epoch "
               f"({self.trained_tokens_per_epoch:,} trained), {self.padded_tokens_per_epoch:,} with padding",
               f"steps: {self.steps} ({self.epochs:.3g} epochs)",
               f"time on {self.where} ({self.method}): {_duration(self.train_seconds)} training steps + "
               + (f"{_duration(self.eval_seconds)} evaluation + " if self.eval_seconds else "")
               + f"{_duration(self.setup_seconds)} setup = {_duration(self.total_seconds)}"]
        if self.dollars is not None:
            out.append(f"cost: ${self.dollars:.2f} at ${self.price_per_hour:.3f}/hour ({PRICES_AS_OF} unless overridden)")
        return out


@dataclass
class ServingEstimate:
    """Endpoint cost per 1,000 requests against a hosted API's per-token price."""

    instance_type: str
    price_per_hour: float
    requests_per_second: float
    prompt_tokens: float
    completion_tokens: float
    api_input_per_million: float | None = None
    api_output_per_million: float | None = None

    @property
    def endpoint_per_1000(self) -> float:
        """At full load: an instance-hour divided by the requests it answers in that hour."""
        return self.price_per_hour / (self.requests_per_second * 3600) * 1000

    @property
    def api_per_1000(self) -> float | None:
        if self.api_input_per_million is None or self.api_output_per_million is None:
            return None
        return 1000 * (self.prompt_tokens * self.api_input_per_million
                       + self.completion_tokens * self.api_output_per_million) / 1e6

    @property
    def capacity_per_month(self) -> float:
        """Requests one always-on instance answers in a month at full load."""
        return self.requests_per_second * 3600 * HOURS_PER_MONTH

    @property
    def break_even_requests_per_month(self) -> float | None:
        """Requests a month above which an always-on endpoint is cheaper than the API; None when it never is
        (no API price, or even at full load the endpoint costs at least the API per request)."""
        api = self.api_per_1000
        if not api or self.endpoint_per_1000 >= api:
            return None
        return self.price_per_hour * HOURS_PER_MONTH / (api / 1000)

    def lines(self) -> list[str]:
        out = [f"serving on {self.instance_type}: ${self.endpoint_per_1000:.4f} per 1,000 requests at "
               f"{self.requests_per_second:g} requests/s (${self.price_per_hour * HOURS_PER_MONTH:,.0f}/month always on); "
               f"a request is {self.prompt_tokens:.0f} prompt + {self.completion_tokens:.0f} completion tokens"]
        if self.api_per_1000 is not None:
            break_even = self.break_even_requests_per_month
            verdict = (f"the endpoint is cheaper above {break_even:,.0f} requests/month" if break_even is not None
                       else f"the endpoint is never cheaper: even at full load ({self.capacity_per_month:,.0f} "
                            "requests/month per instance) it costs more per request")
            out.append(f"hosted API at ${self.api_input_per_million:g}/${self.api_output_per_million:g} per million "
                       f"input/output tokens: ${self.api_per_1000:.4f} per 1,000 requests; {verdict}")
        return out


@dataclass
class Estimate:
    training: TrainingEstimate
    serving: ServingEstimate | None = None

    def __str__(self) -> str:
        return "\n".join(self.training.lines() + (self.serving.lines() if self.serving else []))


def price_for(instance_type: str, prices: Mapping[str, float] | None) -> float:
    table = {**SAGEMAKER_PRICES, **(prices or {})}
    if instance_type not in table:
        raise ConfigError(f"no price for {instance_type!r}; pass prices={{{instance_type!r}: USD_PER_HOUR}} "
                          f"(the built-in table, {PRICES_AS_OF}, has {sorted(SAGEMAKER_PRICES)})")
    return table[instance_type]


def table_rate(table: Mapping[str, Mapping[str, float]], extra: Any, where: str, model: str, what: str) -> float:
    """A rate from the built-in table merged with ``extra`` (a number, a table, or a JSON file of one)."""
    if isinstance(extra, (int, float)):
        return float(extra)
    if isinstance(extra, (str, Path)):
        extra = json.loads(Path(extra).read_text(encoding="utf-8"))
    merged = {k: dict(v) for k, v in table.items()}
    for key, models in (extra or {}).items():
        merged.setdefault(key, {}).update(models)
    rate = merged.get(where, {}).get(model)
    if rate is None:
        raise ConfigError(f"no measured {what} for {model!r} on {where!r}; measure it (see benchmarks/) and pass "
                          f"it as a number or a table {{{where!r}: {{{model!r}: VALUE}}}}")
    return rate


def step_sizes(lengths: Sequence[int], batch_size: int, grad_accum: int, seed: int,
               total_steps: int) -> list[tuple[int, int]]:
    """(real, padded) tokens of every optimizer step, in the order the program runs them."""
    from .train.batching import epoch_batches

    sizes: list[tuple[int, int]] = []
    epoch = 0
    while len(sizes) < total_steps:
        batches = epoch_batches(lengths, batch_size, seed, epoch)
        for g in range(0, len(batches), grad_accum):
            group = batches[g:g + grad_accum]
            sizes.append((sum(lengths[i] for b in group for i in b),
                          sum(len(b) * max(lengths[i] for i in b) for b in group)))
            if len(sizes) == total_steps:
                break
        epoch += 1
    return sizes


def total_steps(examples: int, batch_size: int, grad_accum: int, epochs: float, max_steps: int | None) -> int:
    """The optimizer steps of a run, as the training program counts them."""
    per_epoch = math.ceil(math.ceil(examples / batch_size) / grad_accum)
    return max_steps or max(1, math.ceil(epochs * per_epoch))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_job(spec: Any, train_rows: Sequence[Mapping[str, Any]], eval_rows: Sequence[Mapping[str, Any]], *,
                 where: str | None = None, throughput: Any = None, prices: Mapping[str, float] | None = None,
                 probe_steps: int = 6, serving_instance: str | None = None, requests_per_second: Any = None,
                 api_price_per_million: tuple[float, float] | None = None) -> Estimate:
    """Tokenize the job's rows, then predict its time (probe or table) and price; optionally serving cost.

    ``where=None`` probes this machine unless ``throughput`` (real tokens/s) is a number; a name
    (``"ml.g5.xlarge"``, a table key) reads the throughput table and, for ``ml.*`` types, the price.
    """
    from .encoding import Encoder, encode_dataset
    from .errors import EmptyDatasetError
    from .models import load_tokenizer, resolve_model
    from .template import PromptTemplate
    from .train.batching import epoch_batches, sorted_padded_tokens

    ref = resolve_model(spec.model, spec.revision)
    tokenizer = load_tokenizer(ref, trust_remote_code=spec.trust_remote_code)
    encoder = Encoder(tokenizer, PromptTemplate.from_dict(spec.template), max_length=spec.max_length,
                      truncation=spec.truncation)
    examples, _ = encode_dataset(encoder, train_rows)
    eval_examples, _ = encode_dataset(encoder, eval_rows if spec.training.eval_loss != "off" else [])
    if not examples:
        raise EmptyDatasetError("no trainable rows to estimate; check max_length and the template")
    s = spec.training
    lengths = [len(e.input_ids) for e in examples]
    steps = total_steps(len(examples), s.batch_size, s.grad_accum, s.epochs, s.max_steps)
    sizes = step_sizes(lengths, s.batch_size, s.grad_accum, spec.seed, steps)
    first_epoch = epoch_batches(lengths, s.batch_size, spec.seed, 0)
    steps_per_epoch = math.ceil(len(first_epoch) / s.grad_accum)
    training = TrainingEstimate(
        examples=len(examples), epochs=steps / steps_per_epoch, steps=steps, real_tokens_per_epoch=sum(lengths),
        trained_tokens_per_epoch=sum(e.n_trained for e in examples),
        padded_tokens_per_epoch=sum(len(b) * max(lengths[i] for i in b) for b in first_epoch),
        where=where or "this machine", method="table", setup_seconds=0.0, train_seconds=0.0)
    if where is None and not isinstance(throughput, (int, float)):
        from .train.probe import probe

        t = probe(spec, ref, examples, first_epoch, eval_examples, tokenizer.pad_token_id, probe_steps)
        micro = min(s.grad_accum, len(first_epoch))
        training.train_seconds = sum(t.step_fixed_seconds * micro + t.step_seconds_per_token * padded
                                     for _, padded in sizes)
        evals = (max(1, steps // steps_per_epoch) if s.eval_loss == "epoch" else 1) if eval_examples else 0
        training.eval_seconds = evals * t.eval_seconds_per_token * sorted_padded_tokens(
            [len(e.input_ids) for e in eval_examples])
        cached = lengths + [len(e.input_ids) for e in eval_examples]
        training.setup_seconds = t.load_seconds + (t.cache_seconds_per_token or 0.0) * sorted_padded_tokens(cached)
        training.where, training.method = f"this machine ({t.device})", f"probe of {t.steps_timed} steps"
        training.details = {"probe": t.__dict__}
    else:
        rate = table_rate(THROUGHPUT, throughput, where or "this machine", spec.model, "training throughput")
        training.train_seconds = sum(real for real, _ in sizes) / rate
        training.details = {"real_tokens_per_second": rate, "setup": "instance start and model download not included"}
    if where is not None and where.startswith("ml."):
        training.price_per_hour = price_for(where, prices)
    serving = None
    if serving_instance is not None:
        rps = table_rate(SERVING_THROUGHPUT, requests_per_second, serving_instance, spec.model, "serving throughput")
        rows = list(eval_rows) or list(train_rows)
        prompt = sum(len(encoder.encode_prompt(r)) for r in rows) / len(rows)
        completion = sum(e.n_trained for e in eval_examples or examples) / len(eval_examples or examples)
        api_in, api_out = api_price_per_million or (None, None)
        serving = ServingEstimate(serving_instance, price_for(serving_instance, prices), rps, prompt, completion,
                                  api_in, api_out)
    return Estimate(training, serving)
