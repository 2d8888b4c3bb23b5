"""Synthetic brain-tumour MRI phantoms in BraTS 2023 format (t1n, t1c, t2w, t2f + labels).

``generate_case`` builds one case in memory (pure maths on the SRI24 anatomy);
``write_case`` / ``write_cohort`` save cases as NIfTI plus a ``truth.json``.
"""

from cerebrascan.phantoms.generator import (
    GENERATOR_VERSION,
    PhantomCase,
    PhantomParams,
    WarpedAnatomy,
    case_seed,
    generate_case,
    generate_case_with_anatomy,
    sample_case_params,
)
from cerebrascan.phantoms.writer import write_case, write_cohort

__all__ = [
    "GENERATOR_VERSION",
    "PhantomCase",
    "PhantomParams",
    "WarpedAnatomy",
    "case_seed",
    "generate_case",
    "generate_case_with_anatomy",
    "sample_case_params",
    "write_case",
    "write_cohort",
]
