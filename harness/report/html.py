"""``pfmbench report``: the leaderboard as terminal tables, PNG figures, a CSV and one self-contained HTML page.

The HTML page has no external references (figures are inlined as base64 PNG, styles
inline), so it can be mailed or attached to a paper's supplement as one file.
"""

from __future__ import annotations

import base64
import csv
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from harness import __version__
from harness.report import plots
from harness.report.leaderboard import Leaderboard, build_leaderboard
from harness.report.published import SOURCE, STRATEGY_NAMES, cell_count, published_ranks
from harness.report.roi import RANK_METRIC, build_roi_entries, roi_columns
from harness.results.store import read_rows
from harness.util.atomic import atomic_write_text


@dataclass
class ReportFiles:
    html: Path
    csv: Path
    pngs: list[Path]
    board: Leaderboard


def write_csv(board: Leaderboard, out: Path) -> Path:
    with out.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["dataset", "strategy", "preset", "model", "weights", "seeds", board.metric, "ci_low", "ci_high", "rank",
                    "published", "published_ci_low", "published_ci_high", "delta", "note", "context"])
        for (dataset, strategy, preset), entries in board.groups().items():
            for e in entries:
                p = e.published
                w.writerow([dataset, strategy, preset, e.model, e.weights, e.n, f"{e.value:.4f}", f"{e.ci_low:.4f}", f"{e.ci_high:.4f}",
                            f"{e.rank:g}", "" if p is None else f"{p.mean:.4f}", "" if p is None else f"{p.ci_low:.4f}",
                            "" if p is None else f"{p.ci_high:.4f}", "" if e.delta is None else f"{e.delta:+.4f}", e.note, e.context])
    return out


def _rank_pivot(board: Leaderboard) -> tuple[list[str], list[tuple[str, str, bool, dict[str, str]]]]:
    """Average ranks per strategy as one table: (strategies, [(model, preset, random, {strategy: "rank (datasets)"})])."""
    strategies = sorted({r.strategy for r in board.ranks if r.strategy != "all"})
    cells: dict[tuple[str, str, bool], dict[str, str]] = {}
    for r in board.ranks:
        if r.strategy != "all":
            cells.setdefault((r.model, r.preset, r.random), {})[r.strategy] = f"{r.average_rank:.2f} ({r.datasets})"
    return strategies, [(m, p, rnd, v) for (m, p, rnd), v in sorted(cells.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0]))]


def _inline_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def build_report(results_dir: Path | None = None, out_dir: Path = Path("report"), metric: str = "mDice") -> ReportFiles:
    """Read every row, rank, compare, plot; write ``report.html``, ``leaderboard.csv`` and the PNGs to ``out_dir``.

    With no rows yet the page still shows the published PFM-DenseBench leaderboard (its
    heatmap and average ranks): the baseline a first row of ours will be read against.
    """
    from harness.errors import ConfigError
    from harness.report.published import METRIC_NAMES

    if metric not in METRIC_NAMES:
        raise ConfigError(f"unknown metric '{metric}'", f"use one of {', '.join(METRIC_NAMES)}")
    rows = read_rows(results_dir) if results_dir is None or results_dir.is_dir() else []
    board = build_leaderboard(rows, metric)
    roi = build_roi_entries(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = [plots.heatmap(board, out_dir / "heatmap.png"), plots.strategy_comparison(board, out_dir / "strategies.png")] if board.entries else []
    delta = plots.published_delta(board, out_dir / "published_delta.png") if board.entries else None
    for stale in {"heatmap", "strategies", "published_delta"} - {p.stem for p in pngs} - ({"published_delta"} if delta else set()):
        (out_dir / f"{stale}.png").unlink(missing_ok=True)  # one from an earlier report would mislead
    if delta is not None:
        pngs.append(delta)
    baseline = plots.published_heatmap(metric, out_dir / "published.png")
    csv_path = write_csv(board, out_dir / "leaderboard.csv")
    env = Environment(loader=PackageLoader("harness.report", "templates"), autoescape=select_autoescape(["html"]))
    page = env.get_template("report.html.j2").render(
        board=board, groups=board.groups(), figures={p.stem: _inline_png(p) for p in pngs}, source=SOURCE, published_cells=cell_count(),
        n_rows=len(rows), version=__version__, generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        n_random=sum(e.random for e in board.entries), roi=roi, roi_columns=roi_columns(roi), rank_metric=RANK_METRIC,
        overall=[r for r in board.ranks if r.strategy == "all"], by_strategy=_rank_pivot(board),
        published_ranks=published_ranks(metric), published_strategies=list(STRATEGY_NAMES), baseline=_inline_png(baseline),
    )
    html = out_dir / "report.html"
    atomic_write_text(html, page)
    return ReportFiles(html, csv_path, [*pngs, baseline], board)
