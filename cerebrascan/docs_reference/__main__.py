"""``python -m cerebrascan.docs_reference [--check]``: regenerate (or check) the docs' tables."""

from __future__ import annotations

import argparse
import logging
import sys

from cerebrascan.docs_reference.generate import stale_files, write_blocks

logger = logging.getLogger("cerebrascan.docs_reference")


def main(argv: list[str] | None = None) -> int:
    """Write the generated blocks; with ``--check``, exit 1 if any is stale instead."""
    parser = argparse.ArgumentParser(prog="python -m cerebrascan.docs_reference")
    parser.add_argument("--check", action="store_true", help="report stale blocks, write none")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.check:
        stale = stale_files()
        for name in stale:
            logger.error(
                "%s: generated block is stale; run python -m cerebrascan.docs_reference", name
            )
        return 1 if stale else 0
    for name in write_blocks():
        logger.info("rewrote %s", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
