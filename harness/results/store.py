"""The results store: a Parquet dataset of one file per row, queried with DuckDB.

A row is written atomically (:mod:`harness.util.atomic`): readers never see a partial
row, and a temporary left by a killed writer never matches the ``*.parquet`` glob.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from harness import constants
from harness.errors import ResultsError
from harness.results.schema import ResultRow
from harness.util.atomic import atomic_write

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger("pfmbench.results")

#: What ``pfmbench results`` shows without ``--sql``: one line per row, the columns a reader compares first.
SUMMARY_SQL = ("SELECT row_id, created_at, task, model, weights, dataset, strategy, decoder, preset, epochs, seed, runtime, transfer, "
               "mIoU, mDice, macro_auroc, macro_f1, wall_time_s FROM rows ORDER BY created_at")


def rows_dir(results_dir: Path | None = None) -> Path:
    return (results_dir or constants.RESULTS_DIR) / "rows"


def write_row(row: ResultRow, results_dir: Path | None = None) -> Path:
    """Write one row atomically; returns its path."""
    target_dir = rows_dir(results_dir)
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist([row.model_dump(mode="python")])
        final = atomic_write(target_dir / f"{row.row_id}.parquet", lambda f: pq.write_table(table, f))
    except OSError as exc:
        raise ResultsError(f"cannot write a result row to {target_dir}: {exc.strerror or exc}", "make the results directory writable (or set PFMBENCH_RESULTS)") from exc
    return final


def row_files(results_dir: Path | None = None, on_unreadable: Callable[[Path, str], None] | None = None) -> list[Path]:
    """The readable row files; a damaged one (empty, truncated, not Parquet) is skipped and reported, never fatal."""
    good = []
    for path in sorted(rows_dir(results_dir).glob("*.parquet")):
        try:
            pq.read_metadata(path)
            good.append(path)
        except (OSError, pa.ArrowException) as exc:
            (on_unreadable or _warn_unreadable)(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return good


def _warn_unreadable(path: Path, why: str) -> None:
    log.warning("skipped unreadable result row %s (%s); move it away or delete it", path, why)


def query(sql: str = "SELECT * FROM rows ORDER BY created_at", results_dir: Path | None = None) -> duckdb.DuckDBPyRelation | None:
    """Run DuckDB SQL over the rows (exposed as the view ``rows``); returns a DuckDB relation, or None if there are no rows.

    Bad SQL is a :class:`ResultsError` naming DuckDB's complaint.
    """
    import duckdb

    files = row_files(results_dir)
    if not files:
        return None
    con = duckdb.connect()
    con.execute(f"CREATE VIEW rows AS SELECT * FROM read_parquet({[str(f) for f in files]!r}, union_by_name=true)")
    try:
        return con.sql(sql)
    except duckdb.Error as exc:
        raise ResultsError(f"the query failed: {str(exc).splitlines()[0]}", "fix the SQL; the view is called rows, and pfmbench results shows its columns") from exc


def read_rows(results_dir: Path | None = None) -> list[dict]:
    rel = query(results_dir=results_dir)
    if rel is None:
        return []
    cols = rel.columns
    return [dict(zip(cols, r)) for r in rel.fetchall()]


def find_run(run_key: str, results_dir: Path | None = None) -> ResultRow | None:
    """The stored row of a finished run (the newest if it was re-run), or None."""
    if not run_key.isalnum():
        raise ValueError(f"not a run key: {run_key!r}")
    rel = query(f"SELECT * FROM rows WHERE run_key = '{run_key}' ORDER BY created_at DESC LIMIT 1", results_dir)
    row = next(iter(rel.fetchall()), None) if rel is not None else None
    if rel is None or row is None:
        return None
    data = {k: v for k, v in zip(rel.columns, row) if k in ResultRow.model_fields}
    return ResultRow.model_validate(data)
