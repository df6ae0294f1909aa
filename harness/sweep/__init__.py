"""Sweeps: a grid of runs on one machine (``local``) or a Ray cluster (``ray``), resumable and exactly-once per run key."""
