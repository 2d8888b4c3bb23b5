"""Analyzer plugins run on every prediction (the pluggy host arrives with the plugin-API work)."""
