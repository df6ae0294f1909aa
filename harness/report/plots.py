"""The report's figures, as PNG files (matplotlib, Agg backend: no display needed).

* ``heatmap.png``: model x dataset, one panel per (strategy, preset), the metric and its CI half-width in each cell;
  models with untrained weights are labelled ``(random)``.
* ``strategies.png``: per model, the metric averaged over its datasets, one bar per strategy,
  with the mean 95% CI half-width of those datasets as its error bar.
* ``published.png``: the published PFM-DenseBench frozen leaderboard (model x dataset), the
  baseline view, drawn whether or not there are rows of ours.
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
        values = {(_label(e), e.dataset): (e.value, (e.ci_high - e.ci_low) / 2) for e in cells}
        _grid(fig, ax, models, datasets, values, f"{board.metric}: {key[0]} ({key[1]})")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _grid(fig, ax, rows: list[str], cols: list[str], values: dict[tuple[str, str], tuple[float, float]], title: str) -> None:
    """One heatmap panel: each cell its value and, below it, ± the half-width of its 95% CI."""
    grid = [[values.get((r, c), (float("nan"), 0.0))[0] for c in cols] for r in rows]
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            if (r, c) in values:
                v, half = values[(r, c)]
                ax.text(j, i, f"{v:.3f}\n±{half:.3f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=7)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.03)


def published_heatmap(metric: str, out: Path, strategy: str = "frozen") -> Path:
    """The published leaderboard of one strategy (reference names), each cell its mean and CI half-width: the baseline view."""
    from harness.report.published import published_grid

    plt = _pyplot()
    models, datasets, cells = published_grid(strategy, metric)
    fig, ax = plt.subplots(figsize=(max(8, 0.75 * len(datasets) + 3), 1 + 0.45 * len(models)))
    values = {(m, d): (v.mean, (v.ci_high - v.ci_low) / 2) for (m, d), v in cells.items()}
    _grid(fig, ax, models, datasets, values, f"published PFM-DenseBench {metric}: {strategy}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def strategy_comparison(board: Leaderboard, out: Path) -> Path:
    plt = _pyplot()
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    halves: dict[tuple[str, str], list[float]] = defaultdict(list)
    for e in board.entries:
        values[(_label(e), f"{e.strategy} ({e.preset})")].append(e.value)
        halves[(_label(e), f"{e.strategy} ({e.preset})")].append((e.ci_high - e.ci_low) / 2)
    models = sorted({m for m, _ in values})
    strategies = sorted({s for _, s in values})
    width = 0.8 / max(1, len(strategies))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(models) + 2), 4))
    for k, s in enumerate(strategies):
        xs = [i + k * width for i, m in enumerate(models) if (m, s) in values]
        ys = [sum(values[(m, s)]) / len(values[(m, s)]) for m in models if (m, s) in values]
        errs = [sum(halves[(m, s)]) / len(halves[(m, s)]) for m in models if (m, s) in values]  # the mean CI half-width of its datasets
        ax.bar(xs, ys, width, label=s, yerr=errs, capsize=3)
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
