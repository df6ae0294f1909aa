"""Result rows: the schema, the atomic Parquet store, and queries."""

from harness.results.schema import METRICS, ResultRow
from harness.results.store import query, read_rows, write_row

__all__ = ["METRICS", "ResultRow", "query", "read_rows", "write_row"]
