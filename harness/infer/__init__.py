"""Inference at test time: resize (the reference) or sliding window at the original resolution."""
