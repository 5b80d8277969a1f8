"""Token ids and completion-only labels for one tokenizer and one template.

Training and inference share this code, so an inference prompt is token-for-token the prompt the
model was trained on. Three rules hold for every template:

- only the completion and its end-of-turn token are trained (label != -100), even when pad == eos;
- text that came from a row (or a user) is tokenized with ``split_special_tokens=True``, so a
  ``<|im_start|>assistant`` typed by a user is plain text, never a control token;
- nothing adds a BOS the chat template did not ask for (no double BOS).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

from .errors import TemplateError
from .template import Part, PromptTemplate

IGNORE_INDEX = -100
Truncation = Literal["prompt", "drop"]
# A fast tokenizer keeps per-call options (split_special_tokens among them) as shared state: calls from
# several threads, e.g. a server's handlers, could tokenize a user's "<|im_start|>" as a control token.
# Every tokenizer call here takes this lock.
_TOKENIZER_LOCK = threading.Lock()
_SENTINEL = re.compile("\ue000(\\d+)\ue001")


def _sentinel(i: int) -> str:
    return f"\ue000{i}\ue001"


@dataclass
class Encoded:
    """One tokenized example: ids, labels (-100 = not trained) and how it was altered."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def n_trained(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass
class EncodeStats:
    """What happened to the rows of a dataset during tokenization."""

    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_completion: int = 0
    lengths: list[int] = field(default_factory=list)


@dataclass
class _Piece:
    text: str
    from_row: bool  # user/row text: special-token strings inside stay plain text
    trained: bool
    parts: tuple[Part, ...] = ()  # what row text is made of: the row's values and the template's wording


def _row_piece(parts: Sequence[Part], trained: bool) -> _Piece:
    return _Piece("".join(text for text, _ in parts), True, trained, tuple(parts))


class Encoder:
    """Encodes template rows for ``tokenizer`` (any Hugging Face tokenizer)."""

    def __init__(self, tokenizer: Any, template: PromptTemplate, *, max_length: int = 1024,
                 truncation: Truncation = "prompt") -> None:
        if truncation not in ("prompt", "drop"):
            raise TemplateError(f"truncation={truncation!r}; use 'prompt' (cut the prompt, keep the completion) or 'drop'")
        if max_length < 8:
            raise TemplateError(f"max_length={max_length} is too small; use at least 8 tokens")
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.truncation = truncation
        self._struct_cache: dict[str, list[int]] = {}
        if tokenizer.eos_token_id is None:
            raise TemplateError("the tokenizer has no EOS token, so the model could never learn to stop")
        if template.kind == "plain":
            self.end_of_turn = tokenizer.eos_token
            self._bos_prefix = _special_prefix(tokenizer)
        else:
            if not getattr(tokenizer, "chat_template", None):
                raise TemplateError("this tokenizer has no chat template; use PromptTemplate.plain(...) "
                                    "for base models, or pick an instruct/chat model")
            self.end_of_turn = self._find_end_of_turn()
            self._bos_prefix = []

    # -- public ----------------------------------------------------------------------------------
    @property
    def stop_token_ids(self) -> list[int]:
        """Token ids that end a generated reply: the end-of-turn token and EOS."""
        ids = [self.tokenizer.convert_tokens_to_ids(self.end_of_turn), self.tokenizer.eos_token_id]
        return sorted({i for i in ids if isinstance(i, int) and i >= 0})

    def encode_example(self, row: Mapping[str, Any]) -> Encoded | None:
        """Ids and labels for a training row, or None when the row cannot be trained on."""
        return self._encode(row)[0]

    def _encode(self, row: Mapping[str, Any]) -> tuple[Encoded | None, str]:
        pieces = self._pieces(row)
        ids, labels = self._tokenize(pieces)
        if not any(label != IGNORE_INDEX for label in labels):
            return None, "no_completion"
        if len(ids) <= self.max_length:
            return Encoded(ids, labels), "ok"
        if self.truncation == "drop":
            return None, "too_long"
        encoded = self._truncate_prompt(pieces)
        return encoded, "truncated" if encoded else "too_long"

    def encode_prompt(self, source: Mapping[str, Any] | Sequence[Mapping[str, str]]) -> list[int]:
        """Prompt ids for inference: a row of template columns, or a list of chat messages."""
        ids, _ = self._tokenize(self._prompt_pieces(source), bos=True)
        return ids

    def prompt_text(self, source: Mapping[str, Any] | Sequence[Mapping[str, str]]) -> str:
        """The inference prompt as text, for a server that tokenizes it itself with special tokens on (TGI):
        the tokenizer's own prefix (e.g. BOS) is left out, because that server adds it."""
        text = "".join(piece.text for piece in self._prompt_pieces(source))
        prefix = self.tokenizer.decode(_special_prefix(self.tokenizer))
        return text[len(prefix):] if prefix and text.startswith(prefix) else text

    def _prompt_pieces(self, source: Mapping[str, Any] | Sequence[Mapping[str, str]]) -> list[_Piece]:
        if self.template.kind == "plain":
            if not isinstance(source, Mapping):
                raise TemplateError("a plain template takes a row of columns, not chat messages")
            return [_row_piece(self.template.prompt_parts(source), trained=False)]
        conversation = (self.template.conversation_parts(source, with_completion=False) if isinstance(source, Mapping)
                        else [(m["role"], [(m["content"], True)]) for m in source])
        return self._chat_pieces(conversation, add_generation_prompt=True)

    # -- pieces ----------------------------------------------------------------------------------
    def _pieces(self, row: Mapping[str, Any]) -> list[_Piece]:
        if self.template.kind == "plain":
            return [_row_piece(self.template.prompt_parts(row), trained=False),
                    _Piece(self.template.completion_text(row), True, True),
                    _Piece(self.tokenizer.eos_token, False, True)]
        return self._chat_pieces(self.template.conversation_parts(row), add_generation_prompt=False)

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        if not messages:
            return ""
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        except Exception as exc:  # jinja raises on roles the template does not support
            raise TemplateError(f"the tokenizer's chat template rejected these messages: {exc}") from exc

    def _chat_pieces(self, conversation: Sequence[tuple[str, Sequence[Part]]],
                     add_generation_prompt: bool) -> list[_Piece]:
        """Split the rendered conversation, (role, content parts) per message, into prompt pieces and trained
        assistant replies."""
        masked = [{"role": role, "content": _sentinel(i)} for i, (role, _) in enumerate(conversation)]
        pieces: list[_Piece] = []
        done = ""
        for a, message in enumerate(masked):
            if message["role"] != "assistant" or a == 0:
                continue
            prompt = self._render(masked[:a], add_generation_prompt=True)
            full = self._render(masked[:a + 1], add_generation_prompt=False)
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise TemplateError("the chat template renders a conversation differently from its prefix, "
                                    "so prompts cannot be masked reliably; use a plain template")
            reply = full[len(prompt):]
            end = reply.find(self.end_of_turn, reply.find(_sentinel(a)) + len(_sentinel(a)))
            if end < 0:
                raise TemplateError(f"the chat template does not end assistant turns with {self.end_of_turn!r}")
            end += len(self.end_of_turn)
            pieces += _split(prompt[len(done):], conversation, trained=False)
            pieces += _split(reply[:end], conversation, trained=True)
            done = full[:len(prompt) + end]
        if add_generation_prompt:
            prompt = self._render(masked, add_generation_prompt=True)
            if not prompt.startswith(done):
                raise TemplateError("the chat template renders a conversation differently from its prefix")
            pieces += _split(prompt[len(done):], conversation, trained=False)
        return pieces

    def _find_end_of_turn(self) -> str:
        """The special token the chat template puts after an assistant reply (e.g. <|im_end|>)."""
        text = self._render([{"role": "user", "content": _sentinel(0)},
                             {"role": "assistant", "content": _sentinel(1)}], add_generation_prompt=False)
        after = text[text.find(_sentinel(1)) + len(_sentinel(1)):]
        specials = set(getattr(self.tokenizer, "all_special_tokens", [])) | {
            t.content for t in getattr(self.tokenizer, "added_tokens_decoder", {}).values() if t.special}
        found = [(after.find(s), s) for s in specials if s and s in after]
        if not found:
            raise TemplateError("the chat template puts no special token after an assistant reply, so the "
                                "model could not learn to stop; use a plain template (it appends EOS)")
        return min(found)[1]

    # -- tokens ----------------------------------------------------------------------------------
    def _tokenize(self, pieces: list[_Piece], bos: bool = True) -> tuple[list[int], list[int]]:
        ids: list[int] = list(self._bos_prefix) if bos else []
        labels = [IGNORE_INDEX] * len(ids)
        for piece in pieces:
            piece_ids = self._ids(piece)
            ids += piece_ids
            labels += piece_ids if piece.trained else [IGNORE_INDEX] * len(piece_ids)
        return ids, labels

    def _ids(self, piece: _Piece) -> list[int]:
        if piece.from_row:
            with _TOKENIZER_LOCK:
                return self.tokenizer(piece.text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        cached = self._struct_cache.get(piece.text)
        if cached is None:
            with _TOKENIZER_LOCK:
                cached = self.tokenizer(piece.text, add_special_tokens=False)["input_ids"]
            self._struct_cache[piece.text] = cached
        return cached

    def _truncate_prompt(self, pieces: list[_Piece]) -> Encoded | None:
        """Cut the row values in the prompt until the example fits; None when it does not fit even without them.

        The template's wording, the chat template's special tokens and the completion are never cut. The longest
        values are cut first, all to one common length, each keeping its head: short values (a name, a topic)
        stay whole and a long one loses its tail. Cut values are rendered like any others, so the example's
        prompt is exactly the inference prompt for those values."""
        pieces = list(pieces)
        while True:
            ids, labels = self._tokenize(pieces)
            if len(ids) <= self.max_length:
                return Encoded(ids, labels, truncated=True)
            values = [(i, j) for i, piece in enumerate(pieces) if not piece.trained
                      for j, (text, is_value) in enumerate(piece.parts) if is_value and text]
            lengths = [len(self._ids(_Piece(pieces[i].parts[j][0], True, False))) for i, j in values]
            if not any(lengths):  # nothing left to cut
                return None
            keep = _common_length(lengths, len(ids) - self.max_length)
            for (i, j), n in zip(values, lengths):
                if n > keep:
                    parts = list(pieces[i].parts)
                    parts[j] = (self._head(parts[j][0], keep), True)
                    pieces[i] = _row_piece(parts, pieces[i].trained)

    def _head(self, text: str, n: int) -> str:
        """The start of row text ``text`` that is its first ``n`` tokens; always shorter than ``text``."""
        with _TOKENIZER_LOCK:
            if getattr(self.tokenizer, "is_fast", False):
                end = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True,
                                     return_offsets_mapping=True)["offset_mapping"][n][0]
            else:  # no offsets: the part of the decoded head that matches the text
                ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
                end = len(os.path.commonprefix([text, self.tokenizer.decode(ids[:n])]))
        return text[:min(end, len(text) - 1)]


def _common_length(lengths: list[int], excess: int) -> int:
    """The most tokens each value may keep so that cutting the longer ones removes ``excess`` tokens (0 if
    even that is not enough); below the longest length, so every round cuts something."""
    low, high = 0, max(lengths) - 1
    while low < high:
        mid = (low + high + 1) // 2
        if sum(max(0, n - mid) for n in lengths) >= excess:
            low = mid
        else:
            high = mid - 1
    return low


def _split(text: str, conversation: Sequence[tuple[str, Sequence[Part]]], trained: bool) -> list[_Piece]:
    """Replace sentinels by message contents, marking which pieces came from rows."""
    pieces = []
    pos = 0
    for match in _SENTINEL.finditer(text):
        if match.start() > pos:
            pieces.append(_Piece(text[pos:match.start()], False, trained))
        pieces.append(_row_piece(conversation[int(match.group(1))][1], trained))
        pos = match.end()
    if pos < len(text):
        pieces.append(_Piece(text[pos:], False, trained))
    return [p for p in pieces if p.text]


def _special_prefix(tokenizer: Any) -> list[int]:
    """The ids a tokenizer puts before text on its own (e.g. BOS for Llama-2 style tokenizers)."""
    with _TOKENIZER_LOCK:
        with_specials = tokenizer("x")["input_ids"]
        without = tokenizer("x", add_special_tokens=False)["input_ids"]
    for start in range(len(with_specials) - len(without) + 1):
        if with_specials[start:start + len(without)] == without:
            return with_specials[:start]
    return []


def encode_dataset(encoder: Encoder, rows: Sequence[Mapping[str, Any]]) -> tuple[list[Encoded], EncodeStats]:
    """Encode every row; rows that cannot be trained are dropped and counted, never kept all-masked."""
    stats = EncodeStats()
    out = []
    for row in rows:
        enc, outcome = encoder._encode(row)
        if enc is None:
            if outcome == "too_long":
                stats.dropped_too_long += 1
            else:
                stats.dropped_no_completion += 1
            continue
        stats.kept += 1
        stats.truncated += outcome == "truncated"
        stats.lengths.append(len(enc.input_ids))
        out.append(enc)
    return out, stats
