"""The ``edema_index`` analyzer: SNFH volume relative to the tumour core, with a category."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from plugins.analyzer import AnalysisContext, Analyzer, Need
from plugins.hookspecs import hookimpl

Category = Literal["none", "mild", "moderate", "severe"]
THRESHOLDS: tuple[tuple[float, Category], ...] = ((0.5, "none"), (1.5, "mild"), (3.0, "moderate"))


class EdemaIndexOptions(BaseModel):
    """Options of ``edema_index`` (``options.analyzers.edema_index``)."""

    model_config = ConfigDict(extra="forbid")

    write_mask: bool = Field(
        default=False, description="Also write the SNFH mask as artefact 'edema_index_snfh'."
    )


class EdemaIndexResult(BaseModel):
    """Edema index of one study."""

    edema_index: float | None = Field(
        description="SNFH volume / tumour-core (NETC + ET) volume; None without tumour core."
    )
    category: Category | None = Field(
        description="none < 0.5 <= mild < 1.5 <= moderate < 3 <= severe; None without core."
    )
    snfh_ml: float = Field(description="SNFH volume (mL), from volumetrics.")
    tc_ml: float = Field(description="Tumour-core volume (mL), from volumetrics.")


def categorise(index: float) -> Category:
    """The category of an edema index."""
    for upper, category in THRESHOLDS:
        if index < upper:
            return category
    return "severe"


class EdemaIndexAnalyzer(Analyzer):
    """Edema index: SNFH volume relative to the tumour core, with a coarse category."""

    name = "edema_index"
    version = "0.1.0"
    result_model = EdemaIndexResult
    options_model = EdemaIndexOptions
    needs = frozenset({Need.SEGMENTATION})
    depends_on = ("volumetrics",)
    timeout_s = 10.0

    def analyze(self, context: AnalysisContext) -> EdemaIndexResult:
        """Read the volumes from ``volumetrics``; write the SNFH mask if asked to.

        Raises:
            ValueError: the ``volumetrics`` result is missing.
        """
        volumetrics = context.results.get("volumetrics")
        if volumetrics is None:
            raise ValueError("edema_index needs the volumetrics result, got none")
        volumes = volumetrics.model_dump()["volumes_ml"]
        snfh, tc = float(volumes["SNFH"]), float(volumes["TC"])
        options = context.options_as(EdemaIndexOptions)  # validated once by the host
        if options.write_mask and context.segmentation is not None:
            context.artefacts.write_nifti(
                "edema_index_snfh",
                context.segmentation == 2,
                description="SNFH (edema) mask used by edema_index",
            )
        index = snfh / tc if tc > 0 else None
        return EdemaIndexResult(
            edema_index=index,
            category=categorise(index) if index is not None else None,
            snfh_ml=snfh,
            tc_ml=tc,
        )


@hookimpl
def register_analyzers() -> list[Analyzer]:
    """This plugin's analyzers (it needs no server settings, so it takes no ``settings``)."""
    return [EdemaIndexAnalyzer()]
