"""Axolotl's face of the plugin: the hooks, the documented `dskd_*` schema, the trainer, the
chat-template strategy, resume checks and per-release facts."""
