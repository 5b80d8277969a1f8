"""The continuous batch's slack KV cache against the plain left-padded concatenation it replaces.

Random keys and values stand in for a model's: rows of different widths join, every step appends a
column (past the spare room, so the buffers grow), finished rows leave and padding columns are cut;
after each operation the window the model would read must equal the tensors built with ``torch.cat``.
"""

from __future__ import annotations

import torch

from finetune_sdk.serve.kvcache import SPARE_COLUMNS, SlackLayer

HEADS, DIM = 2, 4


def left_pad(x: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([x.new_zeros(x.shape[0], HEADS, n, DIM), x], dim=-2)


class Reference:
    """The old way: one tensor per layer, re-concatenated on every change."""

    def __init__(self, row: torch.Tensor) -> None:
        self.keys = row

    def append_row(self, row: torch.Tensor) -> None:
        grow = row.shape[-2] - self.keys.shape[-2]
        self.keys = torch.cat([left_pad(self.keys, max(0, grow)), left_pad(row, max(0, -grow))])

    def update(self, column: torch.Tensor) -> None:
        self.keys = torch.cat([self.keys, column], dim=-2)

    def keep(self, indices: list[int], cut: int) -> None:
        self.keys = self.keys[indices][:, :, cut:]


def rand(rows: int, width: int) -> torch.Tensor:
    return torch.randn(rows, HEADS, width, DIM)


def test_slack_layer_matches_concatenation_through_joins_steps_drops_and_cuts():
    """Values are always twice the keys, so one reference checks both."""
    torch.manual_seed(0)
    first = rand(1, 5)
    layer, reference = SlackLayer(first, first * 2), Reference(first)

    def check() -> None:
        assert torch.equal(layer.keys, reference.keys)
        assert torch.equal(layer.values, reference.keys * 2)

    for width in (3, 9, 9, 1):  # shorter, wider (the batch widens on the left), equal, much shorter
        row = rand(1, width)
        layer.append_row(row, row * 2)
        reference.append_row(row)
        check()
    for step in range(SPARE_COLUMNS + 10):  # past the spare columns: the buffers reallocate at least once
        column = rand(len(layer.keys), 1)
        returned, _ = layer.update(column, column * 2)
        reference.update(column)
        assert returned is layer.keys
        check()
        if step == 20:
            layer.keep([0, 2, 3, 4], 0)
            reference.keep([0, 2, 3, 4], 0)
            check()
    row = rand(1, 200)  # wider than the whole batch after all those steps
    layer.append_row(row, row * 2)
    reference.append_row(row)
    check()
    layer.keep([1, 4], 150)
    reference.keep([1, 4], 150)
    check()
    column = rand(2, 1)
    layer.update(column, column * 2)
    reference.update(column)
    check()


def test_a_wider_row_finds_zeros_where_the_window_widens_not_stale_columns():
    """Columns left of the window (cut earlier, or left there by a row that has gone) hold old numbers;
    when a wider row widens the window over them, the other rows must read padding (zeros) there, or a
    masked position could carry a NaN into attention."""
    stale = torch.full((1, HEADS, 6, DIM), float("nan"))
    stale[:, :, 4:] = 1.0
    layer = SlackLayer(stale, stale)
    layer.keep([0], 4)  # the window is the row's last 2 columns; the 4 NaN columns stay in the buffer
    joining = rand(1, 6)
    layer.append_row(joining, joining)
    assert not torch.isnan(layer.keys).any() and not torch.isnan(layer.values).any()
    assert torch.equal(layer.keys[0, :, :4], torch.zeros(HEADS, 4, DIM))
    assert torch.equal(layer.keys[0, :, 4:], torch.ones(HEADS, 2, DIM))
    assert torch.equal(layer.keys[1], joining[0])
