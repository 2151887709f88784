"""Command-line tools: sweep, compare, lr_finder, and the `foundry` umbrella command."""
