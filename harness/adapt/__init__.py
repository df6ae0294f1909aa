"""Decoders and adaptation strategies that turn token features into segmentations."""
