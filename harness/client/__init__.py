"""Triton client."""
