"""Iteration-level (continuous) batching for greedy generation: rows join and leave between decode steps.

A batched ``generate`` call runs until its longest reply ends and pads every prompt to the longest one.
Here each prompt is prefilled alone (no padding, and the template's fixed prefix comes from a cached
KV), then joins the shared KV cache as one more left-padded row; every ``step`` decodes one token for
all rows and drops those that finished, so a short reply frees its slot at once for a waiting prompt.

    add(prompt) ──> prefill the prompt's suffix after the cached prefix ──> left-pad, append a row
    step()      ──> one forward over the rows' last tokens ──> argmax ──> drop finished rows
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Hashable

import torch
from transformers import DynamicCache

from .kvcache import slack_cache


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class _Row:
    tag: Hashable
    prompt_tokens: int
    max_new_tokens: int
    stop: list[str]
    tokens: list[int] = field(default_factory=list)


class PrefixCache:
    """The KV of the prompt prefix every request shares (the template's system turn), computed once."""

    def __init__(self, model: Any, prefix_ids: list[int]) -> None:
        self.model = model
        self.ids = prefix_ids
        self._kv: DynamicCache | None = None

    def length_for(self, prompt: list[int]) -> int:
        """How many leading tokens of ``prompt`` the cache covers (0 when it does not start with the prefix)."""
        n = len(self.ids)
        return n if n and len(prompt) > n and prompt[:n] == self.ids else 0

    @torch.inference_mode()
    def cache_for(self, prompt: list[int]) -> tuple[DynamicCache, int]:
        """A fresh cache holding the prefix KV when ``prompt`` starts with it, and the prefix length."""
        cache = DynamicCache()
        n = self.length_for(prompt)
        if n:
            if self._kv is None:
                self._kv = _forward(self.model, self.ids, DynamicCache(), 0).cache
            for i, layer in enumerate(self._kv.layers):
                cache.update(layer.keys, layer.values, i)
        return cache, n


class DecodeBatch:
    """Rows generating together over one left-padded KV cache; greedy, one token per ``step``."""

    def __init__(self, model: Any, tokenizer: Any, stop_ids: list[int], prefix: PrefixCache) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.prefix = prefix
        self.rows: list[_Row] = []
        self._cache: Any = None  # per layer K/V: [rows, kv heads, width, head dim], in a slack_cache
        self._mask = torch.zeros(0, 0, dtype=torch.long)  # [rows, width]: 1 where a real token sits
        self._next = torch.zeros(0, dtype=torch.long)  # each row's newest token, not yet in the cache

    def __len__(self) -> int:
        return len(self.rows)

    @torch.inference_mode()
    def add(self, tag: Hashable, prompt: list[int], max_new_tokens: int, stop: list[str]) -> list[tuple[Any, Generation]]:
        """Prefill ``prompt`` and make it a row; returns it at once if its first token already ends it."""
        cache, start = self.prefix.cache_for(prompt)
        out = _forward(self.model, prompt[start:], cache, start)
        first = int(out.logits[0, -1].argmax())
        width = len(prompt)
        row_mask = torch.ones(1, width, dtype=torch.long, device=self._device)
        if self._cache is None or not self.rows:
            self._cache, self._mask = slack_cache(out.cache), row_mask
        else:
            for mine, new in zip(self._cache.layers, out.cache.layers):
                mine.append_row(new.keys, new.values)  # right-aligned: the shorter side is left-padded
            grow = width - self._mask.shape[1]
            self._mask = torch.cat([_left_pad(self._mask, max(0, grow)), _left_pad(row_mask, max(0, -grow))])
        self._next = torch.cat([self._next.to(self._device), torch.tensor([first], device=self._device)])
        self.rows.append(_Row(tag, len(prompt), max_new_tokens, stop, [first]))
        return self._drop_finished()

    @torch.inference_mode()
    def step(self) -> list[tuple[Any, Generation]]:
        """Decode one token for every row; returns the rows that finished, as (tag, Generation)."""
        if not self.rows:
            return []
        positions = self._mask.sum(dim=1, keepdim=True)
        self._mask = torch.cat([self._mask, torch.ones_like(positions)], dim=1)
        out = self.model(input_ids=self._next[:, None], attention_mask=self._mask, position_ids=positions,
                         cache=self._cache, use_cache=True, logits_to_keep=1)
        self._next = out.logits[:, -1].argmax(dim=-1)
        for row, token in zip(self.rows, self._next.tolist()):
            row.tokens.append(token)
        return self._drop_finished()

    @torch.inference_mode()
    def drop(self, tags: set[Hashable]) -> None:
        """Stop generating the rows with these tags (their client has gone)."""
        self._keep([i for i, row in enumerate(self.rows) if row.tag not in tags])

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _drop_finished(self) -> list[tuple[Any, Generation]]:
        finished = {i: self._result(row) for i, row in enumerate(self.rows)}
        finished = {i: g for i, g in finished.items() if g is not None}
        if finished:
            done = [(self.rows[i].tag, g) for i, g in finished.items()]
            self._keep([i for i in range(len(self.rows)) if i not in finished])
            return done
        return []

    def _keep(self, indices: list[int]) -> None:
        """Keep only these rows, then cut the left columns that are padding in every remaining row."""
        if len(indices) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in indices]
        index = torch.tensor(indices, dtype=torch.long, device=self._device)
        mask = self._mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        cut = int(used[0]) if len(used) else mask.shape[1]
        self._mask = mask[:, cut:]
        for layer in self._cache.layers:
            layer.keep(indices, cut)
        self._next = self._next.index_select(0, index)

    def _result(self, row: _Row) -> Generation | None:
        """The row's Generation when it has finished (end of turn, a stop string, or its token budget)."""
        ended = row.tokens[-1] in self.stop_ids
        if not ended and len(row.tokens) < row.max_new_tokens and not self._hit_stop(row):
            return None
        return finish(self.tokenizer, row.tokens[:-1] if ended else row.tokens, ended, row.stop, row.prompt_tokens)

    def _hit_stop(self, row: _Row) -> bool:
        return reached_stop(self.tokenizer, row.tokens, row.stop)


def reached_stop(tokenizer: Any, tokens: list[int], stop: list[str]) -> bool:
    """Whether the reply so far, ``tokens``, has just come to hold one of the stop strings.

    Callers ask after every new token, so only a match that ends in the newest token is new, and only the tail
    that could hold one is decoded (not the whole reply, every step): a token stands for at least one byte and
    a character for at most four, so a stop string of n characters spans at most 4n tokens; the rest of the
    window covers a character cut in half at its start."""
    if not stop:
        return False
    window = 4 * max(len(s) for s in stop) + 4
    text = tokenizer.decode(tokens[-window:], skip_special_tokens=True)
    return any(s and s in text for s in stop)


def finish(tokenizer: Any, tokens: list[int], ended: bool, stop: list[str], prompt_tokens: int) -> Generation:
    """The reply text of ``tokens``, cut at the first stop string, with its finish reason and token counts."""
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    reason = "stop" if ended else "length"
    for s in stop:
        if s and s in text:
            text, reason = text[:text.index(s)], "stop"
    return Generation(text.strip(), reason, prompt_tokens, len(tokens))


def _forward(model: Any, ids: list[int], cache: DynamicCache, start: int) -> Any:
    """Run ``ids`` (positions start, start+1, ...) after ``cache``, keeping only the last position's logits."""
    device = next(model.parameters()).device
    positions = torch.arange(start, start + len(ids), device=device)[None]
    return model(input_ids=torch.tensor([ids], device=device), position_ids=positions, cache=cache,
                 attention_mask=torch.ones(1, start + len(ids), dtype=torch.long, device=device), use_cache=True,
                 logits_to_keep=1)


def _left_pad(mask: torch.Tensor, n: int) -> torch.Tensor:
    """``mask`` with ``n`` zero columns in front."""
    return torch.cat([mask.new_zeros(mask.shape[0], n), mask], dim=1) if n else mask


def run_all(batch: DecodeBatch, prompts: list[list[int]], settings: Any, max_rows: int) -> list[Generation]:
    """Generate every prompt through ``batch``, at most ``max_rows`` at a time, each joining when a row frees."""
    results: list[Generation | None] = [None] * len(prompts)
    waiting = deque(range(len(prompts)))
    remaining = len(prompts)
    while remaining:
        finished = []
        while waiting and len(batch) < max_rows:
            i = waiting.popleft()
            finished += batch.add(i, prompts[i], settings.max_new_tokens, settings.stop)
        finished += batch.step()
        for i, generation in finished:
            results[i] = generation
            remaining -= 1
    return results  # type: ignore[return-value]
