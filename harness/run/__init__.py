"""Runs: plan a config, execute it through one lifecycle (lifecycle), per task (segmentation, roi), score and make rows (scoring), reproduce."""
