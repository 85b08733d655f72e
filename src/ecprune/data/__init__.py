"""Datasets of the paper's experiments, loaded or generated offline."""
