"""Model loading that cannot run code (issue 18, item 2).

A skops file may name only the types of the committed classifier models (an exact list, kept in
``cerebrascan/classifiers/skops_types.txt``); a file whose tree names ``builtins.exec`` (or any
other type) is refused with that name before anything is built.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.preprocessing import FunctionTransformer

from cerebrascan.classifiers.model_registry import (
    ClassifierNotAvailableError,
    allowed_skops_types,
    load_skops,
    save_skops,
    skops_types,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMITTED = sorted((REPO_ROOT / "models" / "classifiers").glob("*/*.skops"))


def test_the_allow_list_is_exactly_what_the_committed_models_name() -> None:
    assert COMMITTED, "no committed classifier models"
    named: set[str] = set()
    for path in COMMITTED:
        named |= skops_types(path)
    assert allowed_skops_types() == named
    assert not any(name.endswith((".", "*")) for name in allowed_skops_types())  # no prefixes


def test_committed_models_load() -> None:
    for path in COMMITTED:
        assert hasattr(load_skops(path), "transform" if path.name == "ood.skops" else "predict")


def test_a_file_calling_exec_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    # on load and transform this would run exec(<the input>): code from the registry
    save_skops(FunctionTransformer(func=exec, validate=False), path)
    assert "builtins.exec" in skops_types(path)
    with pytest.raises(ClassifierNotAvailableError, match=r"allow-list.*'builtins\.exec'"):
        load_skops(path)


@pytest.mark.parametrize(
    "obj, refused",
    [
        (Path("x"), "pathlib"),  # a trusted-looking library type that no model needs
        (np.random.default_rng(0), "numpy.random"),  # numpy, but not on the list
        ({"f": np.load}, "numpy.load"),  # a numpy function that reads files
    ],
)
def test_types_outside_the_list_are_refused(tmp_path: Path, obj: object, refused: str) -> None:
    path = tmp_path / "model.skops"
    save_skops(obj, path)
    with pytest.raises(ClassifierNotAvailableError, match=refused):
        load_skops(path)


def test_a_corrupt_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    path.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ClassifierNotAvailableError, match="not a readable skops file"):
        load_skops(path)
