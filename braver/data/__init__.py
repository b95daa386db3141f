"""Datasets on disk → cases → preprocessed, memory-mapped arrays → patch batches."""
