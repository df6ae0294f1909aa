"""Leaderboards, figures and the HTML report over the results store (``pfmbench report``)."""
