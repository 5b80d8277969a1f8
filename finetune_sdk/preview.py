"""See exactly what is trained: rendered examples with trained vs masked tokens, plus a lint.

The lint fails loudly on the mistakes that silently ruin fine-tunes: rows with nothing trained, an
end-of-turn token that is not trained (the model never learns to stop), a doubled BOS, and
completions cut away by truncation.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from .encoding import IGNORE_INDEX, Encoded, Encoder
from .errors import TemplateError
from .models import load_tokenizer, resolve_model
from .template import PromptTemplate

TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"


@dataclass
class Preview:
    """Rendered examples (text with trained spans marked), lint problems over all rows, and the rows training
    leaves out (longer than max_length with ``truncation="drop"``)."""

    examples: list[str]
    problems: list[str] = field(default_factory=list)
    rows_checked: int = 0
    dropped: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        return "\n\n".join(self.examples)


def lint(encoder: Encoder, rows: Sequence[dict[str, Any]], numbers: Sequence[int] | None = None) -> list[str]:
    """Problems found in the encoded rows, each with the numbers of the rows it affects (``numbers``: each row's
    number in the user's dataset; by default its position in ``rows``)."""
    return _check(encoder, rows, numbers)[0]


def _check(encoder: Encoder, rows: Sequence[dict[str, Any]],
           numbers: Sequence[int] | None) -> tuple[list[str], list[int]]:
    """(lint problems, numbers of the rows that truncation="drop" leaves out for being too long)."""
    tok = encoder.tokenizer
    eot_id = tok.convert_tokens_to_ids(encoder.end_of_turn)
    found: dict[str, list[int]] = {}
    dropped: list[int] = []
    for i, row in zip(range(len(rows)) if numbers is None else numbers, rows):
        enc, outcome = encoder._encode(row)
        if enc is None:
            if outcome == "too_long" and encoder.truncation == "drop":
                dropped.append(i)
                continue
            key = ("completion truncated away: longer than max_length even with the prompt's row values cut"
                   if outcome == "too_long" else "nothing trained: every label is -100")
            found.setdefault(key, []).append(i)
            continue
        trained = [t for t, label in zip(enc.input_ids, enc.labels) if label != IGNORE_INDEX]
        if trained[-1] != eot_id:
            found.setdefault(f"end-of-turn token {encoder.end_of_turn!r} is not trained: the model will not learn "
                             "to stop", []).append(i)
        if tok.bos_token_id is not None and enc.input_ids[:2] == [tok.bos_token_id] * 2 and tok.bos_token != tok.eos_token:
            found.setdefault("double BOS at the start of the example", []).append(i)
    if rows and len(dropped) == len(rows):
        found["every row is longer than max_length and would be dropped; raise max_length or use "
              "truncation='prompt'"] = dropped
    return [f"{problem} (rows {_rows(idx)})" for problem, idx in found.items()], dropped


def _rows(idx: list[int]) -> str:
    shown = ", ".join(map(str, idx[:8]))
    return shown + (f" and {len(idx) - 8} more" if len(idx) > 8 else "")


def render(encoder: Encoder, enc: Encoded, color: bool) -> str:
    """The example's text, trained spans highlighted (rich) or wrapped in ⟦ ⟧."""
    spans: list[tuple[bool, list[int]]] = []
    for t, label in zip(enc.input_ids, enc.labels):
        trained = label != IGNORE_INDEX
        if spans and spans[-1][0] == trained:
            spans[-1][1].append(t)
        else:
            spans.append((trained, [t]))
    decode = encoder.tokenizer.decode
    if color:
        from rich.markup import escape

        return "".join(f"[bold green]{escape(decode(ids))}[/]" if trained else f"[dim]{escape(decode(ids))}[/]"
                       for trained, ids in spans)
    return "".join(f"{TRAINED_OPEN}{decode(ids)}{TRAINED_CLOSE}" if trained else decode(ids) for trained, ids in spans)


def preview_rows(model: str, template: PromptTemplate, rows: Sequence[dict[str, Any]], *, n: int = 3,
                 color: bool | None = None, file: Any = None, max_length: int = 1024,
                 truncation: str = "prompt", trust_remote_code: bool = False,
                 row_numbers: Sequence[int] | None = None) -> Preview:
    """Print ``n`` rendered rows and the lint over all rows; raise TemplateError if the lint fails.

    ``row_numbers`` are the rows' numbers in the user's dataset, for the lint's messages (default: positions)."""
    out = file or sys.stdout
    if color is None:
        color = out.isatty() and _has_rich()
    encoder = Encoder(load_tokenizer(resolve_model(model), trust_remote_code=trust_remote_code), template,
                      max_length=max_length, truncation=truncation)  # type: ignore[arg-type]
    examples = []
    for row in rows[:n]:
        enc = encoder.encode_example(row)
        if enc is not None:
            examples.append(render(encoder, enc, color))
    problems, dropped = _check(encoder, rows, row_numbers)
    result = Preview(examples, problems, len(rows), dropped)
    legend = ("[bold green]trained[/] / [dim]masked[/]" if color
              else f"{TRAINED_OPEN}trained{TRAINED_CLOSE}, everything else masked (label -100)")
    _print(out, color, f"{len(examples)} of {len(rows)} examples; {legend}\n")
    for i, text in enumerate(examples):
        _print(out, color, f"--- example {i} ---\n{text}\n")
    if dropped:
        _print(out, False, f"{len(dropped)} rows longer than max_length={max_length} are left out of training "
                           f"(truncation='drop'): rows {_rows(dropped)}\n")
    if result.ok:
        _print(out, False, f"lint: OK ({len(rows)} rows checked)\n")
        return result
    _print(out, False, "lint: FAILED\n" + "\n".join(f"  - {p}" for p in result.problems) + "\n")
    raise TemplateError("the preview lint failed: " + "; ".join(result.problems))


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _print(out: Any, color: bool, text: str) -> None:
    if color:
        from rich.console import Console

        Console(file=out, highlight=False).print(text, end="")
    else:
        out.write(text)
