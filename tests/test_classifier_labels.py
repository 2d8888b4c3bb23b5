"""Classifiers trained on real-style labels (issue #22 item 4): a TCGA-like clinical table.

The table is written from phantom truth (four glioma phantoms of seed 8021: IDH 2 mutant / 2
wildtype, grade 2 high / 2 low, MGMT 3 / 1, all gliomas) in TCGA's column names and spellings,
plus a row without a case folder; ``cerebrascan classifiers train --cases --labels`` fits what
the labels allow through the phantom pipeline's features, calibration, OOD check and spec.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cerebrascan.classifiers.clinical_labels import (
    parse_clinical_csv,
    parse_grade,
    parse_idh,
    parse_tumour_type,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
TCGA_HEADER = [
    "case_submitter_id",
    "IDH status",
    "MGMT promoter status",
    "Grade",
    "Histology",
    "age_at_initial_pathologic_diagnosis",
]


def test_tcga_spellings_map_to_targets() -> None:
    assert parse_idh("Mutant") is True and parse_idh("IDH-mut") is True
    assert parse_idh("WT") is False and parse_idh("wild-type") is False
    assert parse_idh("[Not Available]") is None and parse_idh("NA") is None
    assert [parse_grade(g) for g in ("G2", "III", "Grade IV", "WHO 4", "", "GX")] == [
        2, 3, 4, 4, None, None,
    ]  # fmt: skip
    assert parse_tumour_type("glioblastoma") == "glioma"
    assert parse_tumour_type("Oligoastrocytoma") == "glioma"
    assert parse_tumour_type("meningioma") == "meningioma"
    assert parse_tumour_type("[Discrepancy]") is None


def test_table_unknowns_are_counted_per_target() -> None:
    text = (
        "Case,IDH1_status,MGMT_status,neoplasm_histologic_grade,histological_type\n"
        "A,Mutant,Methylated,G2,astrocytoma\n"
        "B,NA,Unmethylated,[Not Available],glioblastoma\n"
        "C,WT,,G4,meningioma\n"
    )
    labels = parse_clinical_csv(text)
    assert labels.columns["idh"] == "IDH1_status" and labels.columns["grade"].startswith("neo")
    assert labels.unknown == {"idh": 1, "mgmt": 1, "grade": 1, "type": 0}
    a, b, c = (r["labels"] for r in labels.records)
    assert a["idh_mutant"] is True and a["high_grade"] is False and a["who_grade"] == 2
    assert b["idh_mutant"] is None and b["high_grade"] is None and b["mgmt_methylated"] is False
    # IDH / MGMT apply to gliomas only
    assert c["tumour_type"] == "meningioma" and c["idh_mutant"] is None


def test_bad_tables_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="no case id column"):
        parse_clinical_csv("patient,IDH status\nA,Mutant\n")
    with pytest.raises(ValueError, match="no label column"):
        parse_clinical_csv("case_id,age\nA,40\n")
    with pytest.raises(ValueError, match="line 3: case id 'A' appears twice"):
        parse_clinical_csv("case_id,IDH status\nA,Mutant\nA,WT\n")


def _labelled_cohort(
    root: Path, seed: int, n_cases: int, *, orphan_row: bool, prefix: str = "PHANTOM"
) -> Path:
    """Glioma phantoms under ``root/cases`` and their TCGA-style table ``root/clinical.csv``."""
    from cerebrascan.phantoms.writer import write_cohort

    folders = write_cohort(
        root / "cases", seed=seed, n_cases=n_cases, prefix=prefix, type_probs={"glioma": 1.0}
    )
    table = root / "clinical.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TCGA_HEADER)
        for folder in folders:
            diagnosis = json.loads((folder / "truth.json").read_text())["diagnosis"]
            writer.writerow(
                [
                    folder.name,
                    "Mutant" if diagnosis["idh_mutant"] else "WT",
                    "Methylated" if diagnosis["mgmt_methylated"] else "Unmethylated",
                    f"G{diagnosis['who_grade']}",
                    "glioblastoma" if diagnosis["who_grade"] == 4 else "astrocytoma",
                    diagnosis["age_years"],
                ]
            )
        if orphan_row:
            writer.writerow(["TCGA-NO-FOLDER", "[Not Available]", "", "", "glioblastoma", ""])
    return table


@pytest.fixture(scope="module")
def labelled_cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Four glioma phantoms and their TCGA-style clinical table (plus a row without a case)."""
    root = tmp_path_factory.mktemp("labelled")
    return root / "cases", _labelled_cohort(root, 8021, 4, orphan_row=True)


@pytest.fixture(scope="module")
def held_out_cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two other glioma phantoms (another seed) as the held-out table."""
    root = tmp_path_factory.mktemp("held_out")
    return root / "cases", _labelled_cohort(root, 9031, 2, orphan_row=False, prefix="HELDOUT")


@pytest.mark.slow
def test_classifiers_train_on_cases_with_labels(
    labelled_cases: tuple[Path, Path], held_out_cases: tuple[Path, Path], tmp_path: Path
) -> None:
    from cerebrascan.classifiers.model_registry import load_skops
    from cerebrascan.cli import main

    cases, table = labelled_cases
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    # features on the reference segmentation only: no default-model inference in this test
    params["classifiers"]["model"].update(classifier_features="truth", ood_features="truth")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(
        main,
        [
            "classifiers", "train", "--params", str(tmp_path / "params.yaml"),
            "--cases", str(cases), "--labels", str(table),
            "--out", str(tmp_path / "models"), "--work", str(tmp_path / "work"),
            "--segmentation-model", str(REPO_ROOT / "models" / "default"),
            "--test-cases", str(held_out_cases[0]), "--test-labels", str(held_out_cases[1]),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "work" / "labels_summary.json").read_text())
    assert summary["cases"] == 4 and summary["labels_without_case_folder"] == 1
    assert summary["columns"]["idh"] == "IDH status"
    assert summary["unknown_values"] == {"idh": 1, "mgmt": 1, "grade": 1, "type": 0}
    assert summary["cases_per_task"]["idh"] == {"idh_mutant": 2, "idh_wildtype": 2}
    assert summary["trained"] == ["grade", "idh"]
    assert "one class only" in summary["skipped"]["tumour_type"]
    assert "fewer than 2" in summary["skipped"]["mgmt"]
    for task in ("grade", "idh"):
        folder = tmp_path / "models" / task
        spec = json.loads((folder / "spec.json").read_text())
        assert spec["training_data"].startswith("clinical labels clinical.csv")
        assert spec["train_class_counts"] == dict.fromkeys(spec["classes"], 2)
        model = load_skops(folder / "model.skops")
        assert list(model.classes_) == spec["classes"]
        assert (folder / "ood.skops").is_file()
        # held out: the two cases of the other table, scored by the fitted model
        held_out = summary["held_out"][task]
        assert held_out["n_cases"] == 2.0 and 0.0 <= held_out["accuracy"] <= 1.0
        assert 0.0 <= held_out["ood_flagged"] <= 1.0
        assert json.loads((folder / "metrics.json").read_text())["held_out"] == held_out
        card = (folder / "model_card.md").read_text()
        assert "trained on clinical labels" in card and "Research use only" in card
        assert "| cases | 2 |" in card
    assert not (tmp_path / "models" / "mgmt").exists()


def test_held_out_cases_must_not_be_training_cases(
    labelled_cases: tuple[Path, Path], tmp_path: Path
) -> None:
    from cerebrascan.classifiers.labels_stage import run_labels_train_stage
    from cerebrascan.classifiers.params import load_classifier_params

    cases, table = labelled_cases
    with pytest.raises(ValueError, match="both --test-cases and --test-labels"):
        run_labels_train_stage(
            load_classifier_params(REPO_ROOT / "params.yaml"),
            cases,
            table,
            tmp_path / "models",
            tmp_path / "work",
            segmentation_model=REPO_ROOT / "models" / "default",
            test_cases_dir=cases,
        )
    params = load_classifier_params(REPO_ROOT / "params.yaml")
    params.model.classifier_features = "truth"
    params.model.ood_features = "truth"
    # one case of the table as both cohorts: the stage reads every case's features before it
    # compares the cohorts, and one shared case must be refused as well as four
    one_case = tmp_path / "one-case"
    one_case.mkdir()
    shared = sorted(cases.iterdir())[0]
    (one_case / shared.name).symlink_to(shared, target_is_directory=True)
    with pytest.raises(ValueError, match=rf"held-out cases \['{shared.name}'\] are also training"):
        run_labels_train_stage(
            params,
            one_case,
            table,
            tmp_path / "models",
            tmp_path / "work",
            segmentation_model=REPO_ROOT / "models" / "default",
            test_cases_dir=one_case,
            test_labels_csv=table,
        )
    assert not (tmp_path / "models").exists()  # refused before anything was fitted
