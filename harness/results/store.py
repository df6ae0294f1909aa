"""The results store: a Parquet dataset of one file per row, queried with DuckDB.

A row is written to a temporary file in the same directory and renamed into place,
so readers never see a partial row and a crash leaves nothing behind (``os.replace``
is atomic on POSIX filesystems).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from harness import constants
from harness.errors import ResultsError
from harness.results.schema import ResultRow


def rows_dir(results_dir: Path | None = None) -> Path:
    return (results_dir or constants.RESULTS_DIR) / "rows"


def write_row(row: ResultRow, results_dir: Path | None = None) -> Path:
    """Write one row atomically; returns its path."""
    target_dir = rows_dir(results_dir)
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist([row.model_dump(mode="python")])
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=target_dir)
        os.close(fd)
        try:
            pq.write_table(table, tmp)
            final = target_dir / f"{row.row_id}.parquet"
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        raise ResultsError(f"cannot write a result row to {target_dir}: {exc.strerror or exc}", "make the results directory writable (or set PFMBENCH_RESULTS)") from exc
    return final


def query(sql: str = "SELECT * FROM rows ORDER BY created_at", results_dir: Path | None = None):
    """Run DuckDB SQL over the rows (exposed as the view ``rows``); returns a DuckDB relation."""
    import duckdb

    files = sorted(rows_dir(results_dir).glob("*.parquet"))
    con = duckdb.connect()
    if not files:
        return None
    con.execute(f"CREATE VIEW rows AS SELECT * FROM read_parquet({[str(f) for f in files]!r}, union_by_name=true)")
    return con.sql(sql)


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
    rows = [] if rel is None else rel.fetchall()
    row = rows[0] if rows else None
    if row is None:
        return None
    data = {k: v for k, v in zip(rel.columns, row) if k in ResultRow.model_fields}
    return ResultRow.model_validate(data)
