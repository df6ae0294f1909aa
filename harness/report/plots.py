"""The report's figures, as PNG files (matplotlib, Agg backend: no display needed).

* ``heatmap.png``: model x dataset, one panel per (strategy, preset), the metric in each cell;
  models with untrained weights are labelled ``(random)``.
* ``strategies.png``: per model, the metric averaged over its datasets, one bar per strategy.
* ``published_delta.png``: for entries with real weights and a published cell, ours minus
  published, with the published CI as an error bar (only written when there is such an entry).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from harness.report.leaderboard import Entry, Leaderboard


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(e: Entry) -> str:
    return f"{e.model} (random)" if e.random else e.model


def heatmap(board: Leaderboard, out: Path) -> Path:
    plt = _pyplot()
    panels: dict[tuple[str, str], list[Entry]] = defaultdict(list)
    for e in board.entries:
        panels[(e.strategy, e.preset)].append(e)
    keys = sorted(panels)
    fig, axes = plt.subplots(len(keys), 1, figsize=(max(6, 1.2 * len({e.dataset for e in board.entries}) + 3), 1 + 2.2 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        cells = panels[key]
        models = sorted({_label(e) for e in cells})
        datasets = sorted({e.dataset for e in cells})
        grid = [[float("nan")] * len(datasets) for _ in models]
        for e in cells:
            grid[models.index(_label(e))][datasets.index(e.dataset)] = e.value
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(datasets)), datasets, rotation=30, ha="right")
        ax.set_yticks(range(len(models)), models)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if v == v:
                    ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
        ax.set_title(f"{board.metric}: {key[0]} ({key[1]})")
        fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def strategy_comparison(board: Leaderboard, out: Path) -> Path:
    plt = _pyplot()
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for e in board.entries:
        values[(_label(e), f"{e.strategy} ({e.preset})")].append(e.value)
    models = sorted({m for m, _ in values})
    strategies = sorted({s for _, s in values})
    width = 0.8 / max(1, len(strategies))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(models) + 2), 4))
    for k, s in enumerate(strategies):
        xs = [i + k * width for i, m in enumerate(models) if (m, s) in values]
        ys = [sum(values[(m, s)]) / len(values[(m, s)]) for m in models if (m, s) in values]
        ax.bar(xs, ys, width, label=s)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(models))], models, rotation=20, ha="right")
    ax.set_ylabel(f"{board.metric}, mean over datasets")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("strategy comparison")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def published_delta(board: Leaderboard, out: Path) -> Path | None:
    compared = board.compared
    if not compared:
        return None
    plt = _pyplot()
    compared = sorted(compared, key=lambda e: (e.dataset, e.strategy, e.model))
    fig, ax = plt.subplots(figsize=(7, 1 + 0.35 * len(compared)))
    ys = range(len(compared))
    deltas = [e.delta for e in compared]
    low = [e.published.mean - e.published.ci_low for e in compared]  # type: ignore[union-attr]
    high = [e.published.ci_high - e.published.mean for e in compared]  # type: ignore[union-attr]
    ax.barh(list(ys), deltas, color=["tab:green" if e.within_published_ci else "tab:red" for e in compared])
    ax.errorbar([0] * len(compared), list(ys), xerr=[low, high], fmt="none", ecolor="black", capsize=3, label="published 95% CI")
    ax.set_yticks(list(ys), [f"{e.model} / {e.dataset} / {e.strategy}" for e in compared])
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"{board.metric}: ours - published")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
