"""Example CerebraScan analyzer plugin (edema index); the hooks live in ``.plugin``."""

__version__ = "0.1.0"
