"""GPFM's ROI tasks on served CLS embeddings: linear probe and kNN retrieval."""
