"""Tumour type and grade from radiomics (research use only; models trained on phantoms).

For the tumour of the predicted segmentation the analyzer computes one feature vector
(:mod:`cerebrascan.classifiers.features`: pyradiomics per sub-region and modality, location
through the SRI24 atlas, the patient's age when given) and asks two registered models
(``classifiers.model_names``, alias ``classifiers.alias``, loaded from the MLflow registry once
when the analyzer is built, and again when the host reloads, e.g. after a promotion):

* ``tumour_type``: glioma, meningioma, pituitary adenoma, schwannoma, medulloblastoma or
  ependymoma;
* ``grade``: high grade (WHO 3-4) vs low grade (WHO 1-2).

Each answer holds the calibrated class probabilities, the label, its calibrated confidence,
the features that pushed the decision most and the model version. Before any label, an
out-of-distribution check scores the feature vector against the training features: above the
model's threshold the task is "not assessable" with the score, never a confident label. A tumour
smaller than ``classifiers.min_tumour_ml`` (or none), a segmentation that looks failed (its
``segmentation_uncertainty``, from the model's probabilities, above
``classifiers.max_segmentation_uncertainty``), or no model in the registry, is "not
assessable" too, never an error. The atlas mapping is shared with ``nogo`` / ``hotspot``.

Options (``options.analyzers.classification``): see
:class:`plugins.builtin._classifiers.ClassifierOptions` (``patient_age_years``, atlas
registration mode).
"""

from __future__ import annotations

from plugins.analyzer import Analyzer
from plugins.builtin._classifiers import ClassifierAnalyzer
from plugins.hookspecs import hookimpl
from plugins.settings import AnalyzerSettings

TASKS: tuple[str, ...] = ("tumour_type", "grade")


class ClassificationAnalyzer(ClassifierAnalyzer):
    """Tumour type and grade with calibrated probabilities and an out-of-distribution check."""

    name = "classification"
    version = "1.0.0"
    tasks = TASKS


@hookimpl
def register_analyzers(settings: AnalyzerSettings) -> list[Analyzer]:
    """The classification analyzer, its models resolved from the server's registry now."""
    return [ClassificationAnalyzer(settings.classifiers, settings.resolve_classifier)]
