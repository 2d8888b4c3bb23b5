"""IDH mutation and MGMT promoter methylation of gliomas from radiomics (research use only).

Runs after ``classification`` (``depends_on``) and answers only for a tumour that
classification could assess and whose glioma probability reaches
``classifiers.glioma_min_probability``; otherwise both tasks are "not assessable" with the
reason. The models (``cerebrascan-idh``, ``cerebrascan-mgmt`` by default, alias ``champion``)
were trained on glioma phantoms whose IDH status has published imaging correlates (frontal
predilection, less enhancement and necrosis, the T2-FLAIR mismatch sign) and whose MGMT status
has only weak ones: MGMT answers are close to chance by design (see the model card). The same
feature vector, out-of-distribution check and "not assessable" rules as ``classification``
apply; the features are computed once per study and shared.

Options (``options.analyzers.radiogenomics``): as for ``classification``.
"""

from __future__ import annotations

from typing import ClassVar

from cerebrascan.settings import Settings
from plugins.analyzer import AnalysisContext, Analyzer, Need
from plugins.builtin._classifiers import ClassifierOptions, ClassifierResult, run_tasks
from plugins.builtin._support import parse_options
from plugins.hookspecs import hookimpl

TASKS: tuple[str, ...] = ("idh", "mgmt")


def glioma_precondition(classification: ClassifierResult | None, minimum: float) -> str | None:
    """Why IDH / MGMT cannot be assessed from the classification result (None: they can)."""
    if classification is None:
        return "not assessable: no classification result"
    tumour_type = next((p for p in classification.predictions if p.task == "tumour_type"), None)
    if tumour_type is None or not tumour_type.assessable:
        reason = tumour_type.reason if tumour_type is not None else classification.reason
        return f"not assessable: tumour type not assessable ({reason})"
    p_glioma = tumour_type.probabilities.get("glioma", 0.0)
    if p_glioma < minimum:
        return (
            f"not assessable: IDH and MGMT apply to gliomas; P(glioma) = {p_glioma:.2f} "
            f"< {minimum:.2f}"
        )
    return None


class RadiogenomicsAnalyzer(Analyzer):
    """IDH and MGMT status of a glioma with calibrated probabilities and an OOD check."""

    name = "radiogenomics"
    version = "1.0.0"
    result_model = ClassifierResult
    options_model = ClassifierOptions
    # probabilities: the segmentation-uncertainty check (skipped when a model gives none)
    needs: ClassVar[frozenset[Need]] = frozenset(
        {Need.IMAGES, Need.SEGMENTATION, Need.PROBABILITIES}
    )
    depends_on = ("classification",)
    timeout_s = 60.0

    def analyze(self, context: AnalysisContext) -> ClassifierResult:
        """Assess IDH and MGMT when classification says glioma.

        Raises:
            ValueError: invalid options, missing images or segmentation, mismatched grids.
        """
        options = parse_options(ClassifierOptions, context.options, self.name)
        settings = Settings()
        previous = context.results.get("classification")
        classification = (
            ClassifierResult.model_validate(previous.model_dump()) if previous is not None else None
        )
        precondition = glioma_precondition(
            classification, settings.classifiers.glioma_min_probability
        )
        return run_tasks(
            context, options, TASKS, settings.classifiers, settings, precondition=precondition
        ).result


@hookimpl
def register_analyzers() -> list[Analyzer]:
    """The radiogenomics analyzer."""
    return [RadiogenomicsAnalyzer()]
