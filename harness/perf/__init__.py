"""Benchmarks that write JSON: served vs in-process transfer (transfer), forward cost per model (zoo), step cost per strategy (train)."""
