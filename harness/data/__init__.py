"""Dataset cards, built-in sample datasets, loaders and splits."""
