"""The comparison as a PNG: score bars for both models and, for label tasks, both confusion matrices."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MissingDependencyError
from .metrics import NO_LABEL

if TYPE_CHECKING:
    from .report import Comparison

#: Scores between 0 and 1 that share one bar chart.
BAR_METRICS = {"label_accuracy": "label\naccuracy", "exact_match": "exact\nmatch", "rouge_l": "ROUGE-L\nF1",
               "embedding_similarity": "embedding\nsimilarity", "stop_rate": "stop-token\nrate"}
PERCENT = {"label_accuracy", "exact_match", "stop_rate"}


def require_matplotlib() -> None:
    """Raise MissingDependencyError, with the install line, when charts cannot be drawn (check before long work)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("charts need matplotlib: pip install 'finetune-sdk[eval]'") from exc


def render_chart(comparison: "Comparison", path: str | Path) -> Path:
    """Draw the chart as a PNG at ``path`` on its own Agg canvas: no display needed, and the backend the user's
    matplotlib (a notebook, a GUI) is set to is left alone."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    reports = [r for r in (comparison.base, comparison.tuned) if r.confusion is not None]
    fig = Figure(figsize=(6 + 7 * len(reports), 6.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 1 + len(reports), gridspec_kw={"width_ratios": [0.8] + [1.0] * len(reports)}, squeeze=False)
    _bars(axes[0][0], comparison)
    for ax, report in zip(axes[0][1:], reports):
        _confusion(fig, ax, report)
    verdict = "" if not comparison.checks else f" - gate {'PASSED' if comparison.passed else 'FAILED'}"
    fig.suptitle(f"{comparison.base.name} vs {comparison.tuned.name} on {comparison.tuned.n} rows{verdict}",
                 fontsize=14)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    return Path(path)


def _bars(ax, comparison: "Comparison") -> None:
    keys = [k for k in BAR_METRICS if comparison.base.metrics.get(k) is not None
            and comparison.tuned.metrics.get(k) is not None]
    width = 0.38
    for offset, report, color in ((-width / 2, comparison.base, "#9aa5b1"), (width / 2, comparison.tuned, "#2f6fb0")):
        values = [report.metrics[k] for k in keys]
        bars = ax.bar([i + offset for i in range(len(keys))], values, width, label=report.name, color=color)
        ax.bar_label(bars, labels=[f"{v:.0%}" if k in PERCENT else f"{v:.2f}" for k, v in zip(keys, values)],
                     fontsize=9, padding=2)
    ax.set_xticks(range(len(keys)), [BAR_METRICS[k] for k in keys])
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("score (higher is better)")
    ax.legend(loc="upper left")
    ax.set_title("scores")
    ax.spines[["top", "right"]].set_visible(False)


def _confusion(fig, ax, report) -> None:
    matrix = report.confusion
    image = ax.imshow(matrix, cmap="Blues", aspect="auto")
    labels = report.labels
    ax.set_xticks(range(len(labels) + 1), [*labels, NO_LABEL], rotation=45, ha="right", fontsize=9)
    ax.set_yticks(range(len(labels)), labels, fontsize=9)
    ax.set_xlabel("label named in the reply")
    ax.set_ylabel("true label")
    accuracy = report.metrics.get("label_accuracy")
    ax.set_title(f"{report.name}" + (f": accuracy {accuracy:.1%}" if accuracy is not None else ""))
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                        color="white" if value > peak / 2 else "black")
    from matplotlib.ticker import MaxNLocator

    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, ticks=MaxNLocator(integer=True), label="replies")
