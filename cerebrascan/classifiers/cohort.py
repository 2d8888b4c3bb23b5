"""Phantom cohorts with diagnosis labels for the tumour classifiers.

A cohort is a list of cases, each a tumour type rendered by the phantom generator
(``PhantomParams(tumour_type=...)``) and the labels a study would record. Sampling a cohort is
cheap: only :func:`cerebrascan.phantoms.generator.sample_case_params` runs (no image); the
features stage renders each case again from its seed, bit-identically. Cohort folders are
written and read by :mod:`cerebrascan.classifiers.cohort_files`.

Recorded labels carry deliberate noise, as real ones do (misdiagnosis, assay error): with
probability ``label_noise.tumour_type`` the recorded type is another type, and IDH / MGMT labels
are flipped with their own probabilities. ``truth.json`` keeps both the rendered diagnosis and the
recorded labels. The patient's age is "given" for a fraction of the cases only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, Field, field_validator

from cerebrascan.phantoms.generator import PhantomParams, case_seed, sample_case_params
from cerebrascan.phantoms.tumour_types import ALL_TUMOUR_TYPES, TUMOUR_TYPES, check_type_weights

TASKS: tuple[str, ...] = ("tumour_type", "grade", "idh", "mgmt")
"""The four classification tasks."""


class LabelNoise(BaseModel):
    """Probabilities that a recorded label differs from the rendered truth."""

    tumour_type: float = Field(default=0.02, ge=0, le=1)
    idh: float = Field(default=0.04, ge=0, le=1)
    mgmt: float = Field(default=0.05, ge=0, le=1)


class CohortSpec(BaseModel):
    """One cohort: seed, size and the mix of tumour types."""

    seed: int = Field(ge=0)
    cases: int = Field(ge=1)
    type_probs: dict[str, float]
    age_given_prob: float = Field(default=0.8, ge=0, le=1)
    label_noise: LabelNoise = Field(default_factory=LabelNoise)
    generator_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="PhantomParams fields changed for this cohort (a shifted acquisition), "
        "e.g. {'snr': [4, 6]}; lists become tuples.",
    )

    def phantom_params(self, tumour_type: str) -> PhantomParams:
        """The generator knobs of one case of this cohort."""
        overrides: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in self.generator_overrides.items()
        }
        return PhantomParams(tumour_type=tumour_type, **overrides)

    @field_validator("type_probs")
    @classmethod
    def _known_types(cls, value: dict[str, float]) -> dict[str, float]:
        check_type_weights(value, ALL_TUMOUR_TYPES)
        return value


def _cohort_rng(cohort_seed: int, index: int) -> np.random.Generator:
    # a stream of its own, apart from every stream of the case seed
    return np.random.default_rng(np.random.SeedSequence(cohort_seed, spawn_key=(index, 7919)))


def sample_case(spec: CohortSpec, index: int, case_id: str) -> dict[str, Any]:
    """The truth record of case ``index`` of a cohort (no image rendered).

    Returns:
        ``{"case_id", "seed", "rendered_type", "diagnosis", "labels", "label_noise_applied",
        "age_given"}``; ``labels`` are what a study would record (``age_years`` None when not
        given; ``idh_mutant`` / ``mgmt_methylated`` None for non-gliomas).
    """
    rng = _cohort_rng(spec.seed, index)
    types = list(spec.type_probs)
    weights = np.asarray([spec.type_probs[t] for t in types], dtype=np.float64)
    rendered = types[int(rng.choice(len(types), p=weights / weights.sum()))]
    seed = case_seed(spec.seed, index)
    diagnosis = sample_case_params(seed, spec.phantom_params(rendered))["diagnosis"]
    noise = spec.label_noise
    recorded_type = rendered
    applied: dict[str, bool] = {"tumour_type": False, "idh": False, "mgmt": False}
    if rendered in TUMOUR_TYPES and rng.uniform() < noise.tumour_type:
        others = [t for t in TUMOUR_TYPES if t != rendered]
        recorded_type = others[int(rng.integers(len(others)))]
        applied["tumour_type"] = True
    idh, mgmt = diagnosis["idh_mutant"], diagnosis["mgmt_methylated"]
    if idh is not None and rng.uniform() < noise.idh:
        idh, applied["idh"] = not idh, True
    if mgmt is not None and rng.uniform() < noise.mgmt:
        mgmt, applied["mgmt"] = not mgmt, True
    age_given = bool(rng.uniform() < spec.age_given_prob)
    labels = {
        "tumour_type": recorded_type,
        "who_grade": diagnosis["who_grade"],
        "high_grade": diagnosis["high_grade"],
        "idh_mutant": idh if recorded_type == "glioma" else None,
        "mgmt_methylated": mgmt if recorded_type == "glioma" else None,
        "age_years": diagnosis["age_years"] if age_given else None,
    }
    return {
        "case_id": case_id,
        "seed": seed,
        "rendered_type": rendered,
        "diagnosis": diagnosis,
        "labels": labels,
        "label_noise_applied": applied,
        "age_given": age_given,
        "generator_overrides": spec.generator_overrides,
    }


def sample_cohort(spec: CohortSpec, prefix: str) -> list[dict[str, Any]]:
    """Truth records of every case of a cohort, named ``<prefix>-<index:05d>``."""
    return [sample_case(spec, k, f"{prefix}-{k:05d}") for k in range(spec.cases)]


def task_target(record: dict[str, Any], task: str) -> Any:
    """The recorded label of ``task`` for a case (None: the task does not apply).

    ``grade`` is high grade (WHO 3-4) vs low grade (WHO 1-2); ``idh`` and ``mgmt`` apply to
    cases recorded as glioma.
    """
    labels = record["labels"]
    if task == "tumour_type":
        return labels["tumour_type"]
    if task == "grade":  # None: not recorded (a clinical table's unknown grade)
        return None if labels["high_grade"] is None else bool(labels["high_grade"])
    if task == "idh":
        return labels["idh_mutant"]
    if task == "mgmt":
        return labels["mgmt_methylated"]
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
