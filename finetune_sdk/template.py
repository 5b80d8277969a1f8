"""Prompt templates: how a dataset row becomes a conversation (or a prompt and a completion).

Pure Python on purpose: the same object is saved in the artifact and renders inference prompts on a
server that may not have torch, byte for byte as it rendered the training examples.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping, Sequence

from .errors import TemplateError

TemplateKind = Literal["chat", "plain", "messages"]
Message = Mapping[str, str]
Part = tuple[str, bool]  # a stretch of filled-in text and whether it is a row's value (else the template's wording)


def placeholders(fmt: str, *, where: str = "template") -> list[str]:
    """Column names used by ``fmt`` (``{name}``), validated: no positional, attribute or index fields."""
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(fmt) if f is not None]
    except ValueError as exc:
        raise TemplateError(f"{where} {fmt!r} is not a valid format string ({exc}); write literal "
                            "braces as '{{' and '}}'") from exc
    names: list[str] = []
    for field, spec, conv in fields:
        if spec or conv:
            raise TemplateError(f"{where} {fmt!r}: placeholder {{{field}}} has a conversion or format spec; "
                                "only plain {column} placeholders are supported")
        if not field or not field.isidentifier() and not _is_column_name(field):
            raise TemplateError(
                f"{where} {fmt!r} has placeholder {{{field}}}; use named placeholders such as "
                "{questionText} that match dataset columns (write literal braces as '{{' and '}}')")
        if field not in names:
            names.append(field)
    return names


def _is_column_name(field: str) -> bool:
    return all(ch.isalnum() or ch in "_- " for ch in field) and not field.isdigit()


@dataclass(frozen=True)
class PromptTemplate:
    """How rows are rendered. Build one with :meth:`chat`, :meth:`plain` or :meth:`messages`.

    ``chat`` fills ``system``/``user``/``assistant`` format strings from row columns and renders them
    with the tokenizer's own chat template; ``plain`` is a prompt and a completion for base models;
    ``messages`` reads a column of ``[{"role", "content"}, ...]`` conversations (every assistant turn
    is trained).

    ``optional`` names prompt columns a row may leave out or leave empty (a title that some questions
    lack): the placeholder then renders as nothing and the message loses the whitespace left at its
    start and end. Rows are dropped for empty required columns only.
    """

    kind: TemplateKind
    system: str | None = None
    user: str | None = None
    assistant: str | None = None
    prompt: str | None = None
    completion: str | None = None
    messages_column: str | None = None
    optional: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("system", "user", "assistant", "prompt", "completion", "messages_column"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TemplateError(f"{name}= must be a format string such as '{{question}}', got "
                                    f"{type(value).__name__} {value!r}")
        if self.kind == "chat":
            if not self.user or not self.assistant:
                raise TemplateError("a chat template needs both user= and assistant= format strings")
        elif self.kind == "plain":
            if not self.prompt or not self.completion:
                raise TemplateError("a plain template needs both prompt= and completion= format strings")
        elif self.kind == "messages":
            if not self.messages_column:
                raise TemplateError("a messages template needs the name of its messages column")
        else:
            raise TemplateError(f"unknown template kind {self.kind!r}; use 'chat', 'plain' or 'messages'")
        if isinstance(self.optional, str) or not isinstance(self.optional, Sequence) or not all(
                isinstance(c, str) for c in self.optional):
            raise TemplateError(f"optional= must be a list of column names, got {self.optional!r}")
        object.__setattr__(self, "optional", tuple(self.optional))
        if self.optional and self.kind == "messages":
            raise TemplateError("optional= is for chat and plain templates; a messages template has one column")
        prompt_only = [c for c in self.prompt_columns if c not in placeholders(self._completion_format())]
        wrong = [c for c in self.optional if c not in prompt_only]
        if wrong:
            raise TemplateError(f"optional={list(wrong)} must name placeholders of the prompt that the completion "
                                f"does not use; this template's prompt columns are {prompt_only}")
        self.columns  # validates every format string now, not at training time

    @classmethod
    def chat(cls, user: str, assistant: str, system: str | None = None,
             optional: Sequence[str] = ()) -> "PromptTemplate":
        """A system/user/assistant conversation filled from row columns, e.g. ``user="{questionText}"``."""
        return cls(kind="chat", system=system, user=user, assistant=assistant, optional=optional)  # type: ignore[arg-type]

    @classmethod
    def plain(cls, prompt: str, completion: str, optional: Sequence[str] = ()) -> "PromptTemplate":
        """Prompt text followed by completion text and EOS, for base (non-chat) models."""
        return cls(kind="plain", prompt=prompt, completion=completion, optional=optional)  # type: ignore[arg-type]

    @classmethod
    def messages(cls, column: str = "messages") -> "PromptTemplate":
        """Rows carry whole conversations in ``column``; every assistant turn is trained."""
        return cls(kind="messages", messages_column=column)

    @property
    def prompt_columns(self) -> list[str]:
        """Columns an inference prompt is built from, the optional ones included."""
        if self.kind == "messages":
            return [self.messages_column]  # type: ignore[list-item]
        fields = [("system", self.system), ("user", self.user), ("prompt", self.prompt)]
        return _merge(placeholders(fmt, where=f"{name}=") for name, fmt in fields if fmt)

    @property
    def completion_columns(self) -> list[str]:
        """Columns that only the trained completion uses."""
        if self.kind == "messages":
            return []
        name = "assistant=" if self.kind == "chat" else "completion="
        return [c for c in placeholders(self._completion_format(), where=name) if c not in self.prompt_columns]

    @property
    def columns(self) -> list[str]:
        """Every column a training row must have (with a value): all but the optional ones."""
        return [c for c in self.prompt_columns + self.completion_columns if c not in self.optional]

    def _completion_format(self) -> str:
        return (self.assistant if self.kind == "chat" else self.completion) or ""

    def conversation(self, row: Mapping[str, Any], *, with_completion: bool = True) -> list[dict[str, str]]:
        """The chat messages for ``row`` (chat and messages templates)."""
        return [{"role": role, "content": _join(parts)}
                for role, parts in self.conversation_parts(row, with_completion=with_completion)]

    def conversation_parts(self, row: Mapping[str, Any], *,
                           with_completion: bool = True) -> list[tuple[str, list[Part]]]:
        """The chat messages for ``row`` as (role, parts): which text is the row's and which is the template's."""
        if self.kind == "messages":
            messages = _conversation_column(row, self.messages_column, with_completion)  # type: ignore[arg-type]
            return [(m["role"], [(m["content"], True)]) for m in messages]
        if self.kind != "chat":
            raise TemplateError("conversation() is for chat and messages templates; this one is plain")
        reply = self.assistant if with_completion else None
        fields = [("system", self.system), ("user", self.user), ("assistant", reply)]
        return [(role, _fill_parts(fmt, row, self.optional)) for role, fmt in fields if fmt]

    def prompt_source(self, value: Any) -> Mapping[str, Any] | list[Mapping[str, str]]:
        """What a Predictor input means here: a string fills the one required prompt column (a user message
        for a messages template); a dict of columns and a list of chat messages are taken as they are."""
        if isinstance(value, str):
            if self.kind == "messages":
                return [{"role": "user", "content": value}]
            required = [c for c in self.prompt_columns if c not in self.optional]
            if len(required) == 1:
                return {required[0]: value}
            raise TemplateError(f"this template needs the columns {required}; pass a dict, not a string")
        if isinstance(value, Mapping):
            return value
        if isinstance(value, Sequence):
            return list(value)
        raise TemplateError(f"cannot build a prompt from {type(value).__name__}; pass a string, a dict of "
                            "columns or a list of chat messages")

    def prompt_text(self, row: Mapping[str, Any]) -> str:
        """The prompt of a plain template."""
        return _join(self.prompt_parts(row))

    def prompt_parts(self, row: Mapping[str, Any]) -> list[Part]:
        """The prompt of a plain template, as the template's wording and the row's values."""
        return _fill_parts(self.prompt or "", row, self.optional)

    def completion_text(self, row: Mapping[str, Any]) -> str:
        """The trained completion: the assistant reply or the plain completion."""
        return _join(_fill_parts(self._completion_format(), row))

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if v is not None and k != "optional"}
        return {**data, "optional": list(self.optional)} if self.optional else data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PromptTemplate":
        known = {"kind", "system", "user", "assistant", "prompt", "completion", "messages_column", "optional"}
        unknown = set(data) - known
        if unknown:
            raise TemplateError(f"unknown template fields {sorted(unknown)}; expected some of {sorted(known)}")
        if "kind" not in data:
            raise TemplateError("the template has no 'kind'; give one of 'chat', 'plain' or 'messages'")
        return cls(**dict(data))


def _merge(lists: Any) -> list[str]:
    out: list[str] = []
    for names in lists:
        out += [n for n in names if n not in out]
    return out


def _fill_parts(fmt: str, row: Mapping[str, Any], optional: Sequence[str] = ()) -> list[Part]:
    names = placeholders(fmt)
    left_out = [name for name in names if name in optional and _is_blank(row.get(name))]
    values = {name: _as_text(row[name]) for name in names if name in row and name not in left_out}
    missing = [name for name in names if name not in values and name not in left_out]
    if missing:
        raise TemplateError(f"row has no value for {missing}; it has columns {sorted(row)}")
    # str.format_map would interpret the values; substitute one field at a time instead.
    parts: list[Part] = []
    for literal, field, _, _ in string.Formatter().parse(fmt):
        parts.append((literal, False))
        if field is not None and field in values:
            parts.append((values[field], True))
    parts = [part for part in parts if part[0]]
    if left_out and parts:  # the separators written around the missing value go with it
        parts[0] = (parts[0][0].lstrip(), parts[0][1])
        parts[-1] = (parts[-1][0].rstrip(), parts[-1][1])
        parts = [part for part in parts if part[0]]
    return parts


def _is_blank(value: Any) -> bool:
    """An optional column's value that counts as left out: missing, None, NaN or only whitespace."""
    return value is None or (isinstance(value, float) and value != value) or (
        isinstance(value, str) and not value.strip())


def _join(parts: Sequence[Part]) -> str:
    return "".join(text for text, _ in parts)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _conversation_column(row: Mapping[str, Any], column: str, with_completion: bool) -> list[dict[str, str]]:
    messages = row.get(column)
    if hasattr(messages, "tolist"):  # a numpy array: how pandas holds a list column read from Parquet
        messages = messages.tolist()
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise TemplateError(f"column {column!r} must hold a non-empty list of {{'role', 'content'}} messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TemplateError(f"message {i} of column {column!r} must be {{'role': str, 'content': str}}, got {m!r}")
        if m["role"] not in ("system", "user", "assistant"):
            raise TemplateError(f"message {i} has role {m['role']!r}; use 'system', 'user' or 'assistant'")
        out.append({"role": m["role"], "content": m["content"]})
    if not with_completion and out[-1]["role"] == "assistant":
        out = out[:-1]
    return out
