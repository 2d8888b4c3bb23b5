"""Tumour type and grade from radiomics (research use only; models trained on phantoms).

For the tumour of the predicted segmentation the analyzer computes one feature vector
(:mod:`cerebrascan.classifiers.features`: pyradiomics per sub-region and modality, location
through the SRI24 atlas, the patient's age when given) and asks two registered models
(``classifiers.model_names``, alias ``classifiers.alias``, loaded from the MLflow registry):

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

from typing import ClassVar

from cerebrascan.settings import Settings
from plugins.analyzer import AnalysisContext, Analyzer, Need
from plugins.builtin._classifiers import ClassifierOptions, ClassifierResult, run_tasks
from plugins.builtin._support import parse_options
from plugins.hookspecs import hookimpl

TASKS: tuple[str, ...] = ("tumour_type", "grade")


class ClassificationAnalyzer(Analyzer):
    """Tumour type and grade with calibrated probabilities and an out-of-distribution check."""

    name = "classification"
    version = "1.0.0"
    result_model = ClassifierResult
    options_model = ClassifierOptions
    # probabilities: the segmentation-uncertainty check (skipped when a model gives none)
    needs: ClassVar[frozenset[Need]] = frozenset(
        {Need.IMAGES, Need.SEGMENTATION, Need.PROBABILITIES}
    )
    timeout_s = 60.0

    def analyze(self, context: AnalysisContext) -> ClassifierResult:
        """Assess tumour type and grade of the study's tumour.

        Raises:
            ValueError: invalid options, missing images or segmentation, mismatched grids.
        """
        options = parse_options(ClassifierOptions, context.options, self.name)
        settings = Settings()
        return run_tasks(context, options, TASKS, settings.classifiers, settings).result


@hookimpl
def register_analyzers() -> list[Analyzer]:
    """The classification analyzer."""
    return [ClassificationAnalyzer()]
