"""Data: tokenizers, the embedded default data set, prepared token files and batches.

Run `python -m foundry.data --help` for preparation.
"""
