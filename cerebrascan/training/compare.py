"""``cerebrascan models compare``: two registry versions on the same held-out cases.

Both versions run through the evaluate stage's code (the serving engine, then the project's and
the official BraTS metrics); each metric gets both means, the mean paired difference (B - A)
and a seeded bootstrap interval over cases. The comparison is logged to MLflow as one run;
promotion is left to the admin route.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from cerebrascan.registry import (
    ModelNotAvailableError,
    ResolvedModel,
    client_for,
    ensure_experiment,
    resolve_model_version,
)
from cerebrascan.settings import Settings
from cerebrascan.training.evaluate import load_onnx_runner, score_cases
from cerebrascan.training.metrics import REGIONS, paired_bootstrap
from cerebrascan.training.params import EvaluateParams

logger = logging.getLogger(__name__)

COMPARE_EXPERIMENT = "cerebrascan-compare"
#: per region, the compared figures (the lesion-wise ones only when they were computed)
METRIC_SUFFIXES = ("dice", "hd95_mm", "lesion_dice", "lesion_hd95_mm")


class CompareError(ValueError):
    """A model reference that is malformed or not in the registry."""


@dataclass(frozen=True)
class ModelRef:
    """``NAME@VERSION`` or ``NAME@ALIAS``."""

    name: str
    selector: str

    def __str__(self) -> str:
        return f"{self.name}@{self.selector}"


def parse_model_ref(text: str) -> ModelRef:
    """Parse ``NAME@VERSION`` or ``NAME@ALIAS``.

    Raises:
        CompareError: no ``@`` or an empty side.
    """
    name, separator, selector = text.rpartition("@")
    if not separator or not name or not selector:
        raise CompareError(f"{text!r} is not NAME@VERSION or NAME@ALIAS")
    return ModelRef(name, selector)


def resolve_ref(settings: Settings, ref: ModelRef) -> ResolvedModel:
    """Download the registry version ``ref`` names (a number, else an alias).

    Raises:
        CompareError: the registry has no such version or alias.
    """
    version = ref.selector
    try:
        if not version.isdigit():
            version = str(
                client_for(settings).get_model_version_by_alias(ref.name, version).version
            )
        return resolve_model_version(settings, ref.name, version)
    except (MlflowException, ModelNotAvailableError) as exc:
        raise CompareError(f"{ref}: not in the registry {settings.tracking_uri} ({exc})") from exc


@dataclass
class Comparison:
    """Per metric: means of A and B, the paired difference B - A and its interval."""

    first: ResolvedModel
    second: ResolvedModel
    cases: list[str]
    rows: list[dict[str, Any]]
    per_case: dict[str, list[dict[str, Any]]]
    run_id: str | None = None


def compare_rows(
    first_cases: list[dict[str, Any]],
    second_cases: list[dict[str, Any]],
    *,
    resamples: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Side-by-side rows for every compared metric present in both case lists."""
    rows = []
    for region in REGIONS:
        for suffix in METRIC_SUFFIXES:
            key = f"{region}_{suffix}"
            pairs = [
                (a[key], b[key])
                for a, b in zip(first_cases, second_cases, strict=True)
                if a.get(key) is not None and b.get(key) is not None
            ]
            if not pairs:
                continue
            a_values, b_values = [p[0] for p in pairs], [p[1] for p in pairs]
            interval = paired_bootstrap(a_values, b_values, resamples=resamples, seed=seed)
            rows.append(
                {
                    "metric": key,
                    "cases": len(pairs),
                    "a": sum(a_values) / len(pairs),
                    "b": sum(b_values) / len(pairs),
                    "difference": interval["mean_difference"],
                    "low": interval["low"],
                    "high": interval["high"],
                }
            )
    return rows


def compare_models(
    settings: Settings,
    first: ModelRef,
    second: ModelRef,
    cases_dir: Path,
    evaluate: EvaluateParams,
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Run both versions on every case under ``cases_dir`` and log the comparison to MLflow.

    Raises:
        CompareError: a reference is not in the registry.
        FileNotFoundError: no case under ``cases_dir``.
        OfficialMetricsError: the official metrics are on but cannot run.
    """
    models = [resolve_ref(settings, first), resolve_ref(settings, second)]
    per_case = {}
    for ref, model in zip((first, second), models, strict=True):
        logger.info("scoring %s (version %s) on %s", ref, model.version, cases_dir)
        per_case[str(ref)] = score_cases(
            load_onnx_runner(model.folder, evaluate), cases_dir, evaluate
        )
    first_cases, second_cases = per_case[str(first)], per_case[str(second)]
    rows = compare_rows(first_cases, second_cases, resamples=resamples, seed=seed)
    comparison = Comparison(
        first=models[0],
        second=models[1],
        cases=[c["case"] for c in first_cases],
        rows=rows,
        per_case=per_case,
    )
    comparison.run_id = _log_to_mlflow(settings, comparison, first, second, resamples, seed)
    return comparison


def _log_to_mlflow(
    settings: Settings,
    comparison: Comparison,
    first: ModelRef,
    second: ModelRef,
    resamples: int,
    seed: int,
) -> str:
    client = client_for(settings)
    experiment_id = ensure_experiment(client, COMPARE_EXPERIMENT, settings)
    run = client.create_run(
        experiment_id, run_name=f"{first} vs {second}", tags={"cerebrascan.kind": "compare"}
    )
    run_id = str(run.info.run_id)
    params = {
        "model_a": str(first),
        "model_a_version": comparison.first.version,
        "model_b": str(second),
        "model_b_version": comparison.second.version,
        "cases": str(len(comparison.cases)),
        "bootstrap_resamples": str(resamples),
        "bootstrap_seed": str(seed),
    }
    now = int(time.time() * 1000)
    # one batch: a sqlite registry commits per call
    client.log_batch(
        run_id,
        metrics=[
            Metric(f"{row['metric']}.{column}", float(row[column]), now, 0)
            for row in comparison.rows
            for column in ("a", "b", "difference", "low", "high")
        ],
        params=[Param(key, value) for key, value in params.items()],
    )
    client.log_dict(
        run_id,
        {"rows": comparison.rows, "cases": comparison.cases, "per_case": comparison.per_case},
        "comparison.json",
    )
    client.log_text(run_id, comparison_table(comparison), "comparison.md")
    client.set_terminated(run_id)
    return run_id


def comparison_table(comparison: Comparison) -> str:
    """Markdown table: metric, A, B, B - A and its bootstrap interval."""
    first, second = comparison.first, comparison.second
    header = (
        f"A = {first.name} version {first.version}, B = {second.name} version {second.version}, "
        f"{len(comparison.cases)} case(s)\n\n"
        "| metric | cases | A | B | B - A | 95 % interval |\n|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['metric']} | {r['cases']} | {r['a']:.4f} | {r['b']:.4f} | {r['difference']:+.4f} "
        f"| [{r['low']:+.4f}, {r['high']:+.4f}] |"
        for r in comparison.rows
    ]
    return header + "\n".join(lines) + "\n"
