"""Reference tables generated from the code: the route table and the settings reference.

``python -m cerebrascan.docs_reference`` (or ``make docs``) rewrites the blocks between
``<!-- BEGIN generated:NAME -->`` and ``<!-- END generated:NAME -->`` in README.md and
docs/settings.md; ``--check`` only reports stale blocks (``tests/test_docs.py`` does the same).
The routes come from the served app and its OpenAPI spec (``service.py``), the settings from
the :class:`cerebrascan.settings.Settings` model, so neither can be written by hand and drift.
"""

from cerebrascan.docs_reference.generate import (
    GENERATED_FILES,
    generated_blocks,
    replace_block,
    stale_files,
    write_blocks,
)
from cerebrascan.docs_reference.settings_table import SettingRow, setting_rows

__all__ = [
    "GENERATED_FILES",
    "SettingRow",
    "generated_blocks",
    "replace_block",
    "setting_rows",
    "stale_files",
    "write_blocks",
]
