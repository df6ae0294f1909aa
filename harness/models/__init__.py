"""The model zoo: specs parsed from each models/<name>/Dockerfile, weights, builders per library, zoo status."""
