"""The memory plan: what the plugin logs as training starts and `axolotl-dskd plan` prints."""
