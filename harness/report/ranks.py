"""Average ranks with ties: how the report ranks our entries and the published leaderboard alike."""

from __future__ import annotations


def average_ranks(values: list[float]) -> list[float]:
    """Rank 1 = highest value; tied values share the mean of their positions."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks
