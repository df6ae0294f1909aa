"""A slide card's table: one CSV row per slide, validated whole before anything is written or run.

What a bad table looks like, each a one-line :class:`~harness.errors.DataError` naming the
file and row: a missing column, a slide listed twice, a case with two different labels or
survival times, a label that is not one of the card's classes, a negative or non-numeric
time, an event flag other than 0/1, and a slide file that is not on disk.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.cards import DatasetCard
from harness.errors import DataError


@dataclass(frozen=True)
class SlideRecord:
    slide_id: str
    case_id: str
    path: Path
    label: int | None  # class index (wsi-classification)
    time: float | None  # survival time
    event: int | None  # 1 observed, 0 censored


def _bad(table: Path, line: int, problem: str, fix: str = "correct the table, then rerun") -> DataError:
    return DataError(f"{table}: row {line}: {problem}", fix)


def slide_path(card: DatasetCard, root: Path, slide_id: str) -> Path:
    return root / card.layout.images.replace("{id}", slide_id)


def read_table(card: DatasetCard, root: Path, check_files: bool = True) -> list[SlideRecord]:
    """Every row of the card's table under ``root``, checked; ``check_files`` also requires each slide file."""
    assert card.slides is not None, "a slide card"
    cfg = card.slides
    table = root / cfg.table
    try:
        with open(table, newline="") as f:
            rows = list(csv.DictReader(f))
            header = rows[0].keys() if rows else []
    except OSError as exc:
        raise DataError(f"{table}: cannot read the card's table ({exc.strerror or exc})",
                        f"put the {cfg.table} the card describes under {root}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{table}: not a CSV table ({str(exc)[:120]})", "save the table as UTF-8 CSV with a header row") from None
    if not rows:
        raise DataError(f"{table}: no rows", "the table needs a header and one row per slide")
    wanted = [c for c in (cfg.case_column, cfg.slide_column, cfg.label_column, cfg.time_column, cfg.event_column) if c]
    if missing := [c for c in wanted if c not in header]:
        raise DataError(f"{table}: no column {', '.join(repr(c) for c in missing)} (columns: {', '.join(header)})",
                        "rename the column, or set the card's slides.*_column")
    classes = {c.name: c.index for c in card.classes}
    out: list[SlideRecord] = []
    seen: dict[str, int] = {}
    per_case: dict[str, tuple[int, tuple]] = {}
    for line, row in enumerate(rows, start=2):
        slide_id, case_id = (row[cfg.slide_column] or "").strip(), (row[cfg.case_column] or "").strip()
        if not slide_id or not case_id:
            raise _bad(table, line, "empty slide or case id")
        if slide_id in seen:
            raise _bad(table, line, f"slide {slide_id!r} is listed twice (also row {seen[slide_id]})", "keep one row per slide")
        seen[slide_id] = line
        label = time_ = event = None
        if cfg.label_column:
            name = (row[cfg.label_column] or "").strip()
            if name not in classes:
                raise _bad(table, line, f"label {name!r} is not one of the card's classes {sorted(classes)}",
                           "map the label to a class name, or drop the row")
            label = classes[name]
        if cfg.time_column and cfg.event_column:
            try:
                time_ = float(row[cfg.time_column])
            except (TypeError, ValueError):
                raise _bad(table, line, f"time {row[cfg.time_column]!r} is not a number") from None
            if not np.isfinite(time_) or time_ < 0:
                raise _bad(table, line, f"negative or infinite time {time_}", "a follow-up time is >= 0")
            if (row[cfg.event_column] or "").strip() not in ("0", "1"):
                raise _bad(table, line, f"event {row[cfg.event_column]!r} is not 0 (censored) or 1 (observed)")
            event = int(row[cfg.event_column])
        values = (label, time_, event)
        if case_id in per_case and per_case[case_id][1] != values:
            raise _bad(table, line, f"case {case_id!r} has other values than on row {per_case[case_id][0]} {per_case[case_id][1]}",
                       "a case's slides share one label and one survival time: fix the duplicate case")
        per_case.setdefault(case_id, (line, values))
        path = slide_path(card, root, slide_id)
        if check_files and not path.is_file():
            raise _bad(table, line, f"slide file {path} is missing", "complete the download, or drop the row")
        out.append(SlideRecord(slide_id, case_id, path, label, time_, event))
    return out


def case_split(records: list[SlideRecord], ratios: tuple[float, float, float], seed: int) -> dict[str, list[SlideRecord]]:
    """Train/val/test by case (seeded; GPFM's 7:1:2): a patient's slides stay on one side. Each part keeps >= 1 case."""
    cases = sorted({r.case_id for r in records})
    order = np.random.default_rng(seed).permutation(len(cases))
    n = len(cases)
    n_val, n_test = max(1, round(ratios[1] * n)), max(1, round(ratios[2] * n))
    if n - n_val - n_test < 1:
        raise DataError(f"{n} cases are too few for a train/val/test split", "add cases (at least 3)")
    part = {}
    for i, idx in enumerate(order):
        part[cases[idx]] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return {name: [r for r in records if part[r.case_id] == name] for name in ("train", "val", "test")}


def case_folds(records: list[SlideRecord], folds: int, seed: int) -> list[list[str]]:
    """``folds`` disjoint lists of case ids (seeded), stratified by event so every fold has events where possible."""
    by_case: dict[str, int] = {}
    for r in records:
        by_case[r.case_id] = int(r.event or 0)
    if len(by_case) < folds:
        raise DataError(f"{len(by_case)} cases are too few for {folds} folds", "add cases, or lower the card's slides.folds")
    rng = np.random.default_rng(seed)
    out: list[list[str]] = [[] for _ in range(folds)]
    i = 0
    for event in (1, 0):
        ids = sorted(c for c, e in by_case.items() if e == event)
        for idx in rng.permutation(len(ids)):
            out[i % folds].append(ids[idx])
            i += 1
    return out
