"""Metrics: segmentation (pixels and instances) and ROI classification."""


def finite_or_none(value: float) -> float | None:
    """A metric as a row stores it: NaN (nothing to score) becomes null."""
    return None if value != value else float(value)
