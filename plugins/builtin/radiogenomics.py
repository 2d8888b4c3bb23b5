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

from plugins.analyzer import AnalysisContext, Analyzer
from plugins.builtin._classifiers import ClassifierAnalyzer, ClassifierResult
from plugins.hookspecs import hookimpl
from plugins.settings import AnalyzerSettings

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


class RadiogenomicsAnalyzer(ClassifierAnalyzer):
    """IDH and MGMT status of a glioma with calibrated probabilities and an OOD check."""

    name = "radiogenomics"
    version = "1.0.0"
    tasks = TASKS
    depends_on = ("classification",)

    def precondition(self, context: AnalysisContext) -> str | None:
        """Not assessable unless classification assessed a glioma (see the module docstring)."""
        previous = context.results.get("classification")
        classification = (
            ClassifierResult.model_validate(previous.model_dump()) if previous is not None else None
        )
        return glioma_precondition(classification, self.settings.glioma_min_probability)


@hookimpl
def register_analyzers(settings: AnalyzerSettings) -> list[Analyzer]:
    """The radiogenomics analyzer, its models resolved from the server's registry now."""
    return [RadiogenomicsAnalyzer(settings.classifiers, settings.resolve_classifier)]
