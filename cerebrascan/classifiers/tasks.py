"""The four classification tasks' class names and domains, and the rows each one learns from."""

from __future__ import annotations

from typing import Any

from cerebrascan.classifiers.cohort import task_target

#: Class names of the binary tasks: (name for a False label, name for a True label).
BINARY_CLASSES: dict[str, tuple[str, str]] = {
    "grade": ("low_grade", "high_grade"),
    "idh": ("idh_wildtype", "idh_mutant"),
    "mgmt": ("mgmt_unmethylated", "mgmt_methylated"),
}
#: Tasks whose domain is gliomas only (trained and evaluated on cases recorded as glioma).
GLIOMA_TASKS: tuple[str, ...] = ("idh", "mgmt")
AGE_FEATURE = "age_years"


def class_label(task: str, target: Any) -> str:
    """The class name of a recorded target.

    Args:
        task: ``tumour_type``, ``grade``, ``idh`` or ``mgmt``.
        target: the recorded label (:func:`cerebrascan.classifiers.cohort.task_target`).

    Returns:
        The tumour type itself, or the binary task's class name.
    """
    if task == "tumour_type":
        return str(target)
    return BINARY_CLASSES[task][int(bool(target))]


def task_rows(
    task: str, records: list[dict[str, Any]], features: dict[str, dict[str, float]]
) -> tuple[list[dict[str, float]], list[str], list[str]]:
    """Feature rows, class labels and case ids of the cases a task applies to.

    Args:
        task: the task.
        records: cohort truth records.
        features: feature row of each case id; cases without a row are left out.

    Returns:
        ``(rows, labels, case_ids)``, in the records' order.
    """
    rows, labels, ids = [], [], []
    for record in records:
        target = task_target(record, task)
        if target is None or record["case_id"] not in features:
            continue
        rows.append(features[record["case_id"]])
        labels.append(class_label(task, target))
        ids.append(record["case_id"])
    return rows, labels, ids
