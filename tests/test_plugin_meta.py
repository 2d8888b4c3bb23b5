"""Meta-tests of the plugin API: every hook spec is documented and exercised by a test, and
every built-in analyzer documents itself and each field of its result (and options).

A hook counts as exercised when some test file other than this one calls it
(``.hook.<name>(``) or implements it (a ``def <name>(`` under ``@hookimpl``).
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from plugins import hookspecs
from plugins.analyzer import Analyzer
from plugins.host import BUILTIN_PLUGINS, AnalyzerHost
from plugins.settings import AnalyzerSettings, PluginSettings

TESTS_DIR = Path(__file__).resolve().parent
SPEC_MARK = f"{hookspecs.PROJECT_NAME}_spec"


def hook_specs(module: types.ModuleType) -> dict[str, Callable[..., Any]]:
    """The functions of ``module`` marked with the project's ``@hookspec``."""
    return {
        name: value
        for name, value in vars(module).items()
        if callable(value) and hasattr(value, SPEC_MARK)
    }


def undocumented(specs: Mapping[str, Callable[..., Any]]) -> list[str]:
    """Specs without a docstring, or whose docstring does not name each argument."""
    problems = []
    for name, function in specs.items():
        doc = inspect.getdoc(function) or ""
        if len(doc.split()) < 5:
            problems.append(f"{name}: no docstring")
            continue
        for argument in inspect.signature(function).parameters:
            if not re.search(rf"^\s*{argument}\b.*:", doc, flags=re.MULTILINE):
                problems.append(f"{name}: argument {argument!r} not described under Args")
    return problems


def unexercised(names: Iterable[str], sources: Mapping[str, str]) -> list[str]:
    """Hook names that no source calls through ``.hook.`` or implements with ``@hookimpl``."""
    missing = []
    for name in names:
        called = re.compile(rf"\.hook\.{name}\s*\(")
        implemented = re.compile(
            rf"@hookimpl\b[^\n]*\n(?:[ \t]*@[^\n]*\n)*[ \t]*def {name}\s*\(", re.MULTILINE
        )
        if not any(called.search(text) or implemented.search(text) for text in sources.values()):
            missing.append(name)
    return missing


def read_test_sources() -> dict[str, str]:
    """Text of every test file except this one."""
    return {
        str(path): path.read_text(encoding="utf-8")
        for path in sorted(TESTS_DIR.glob("**/test_*.py"))
        if path.resolve() != Path(__file__).resolve()
    }


def schema_fields_without_description(model: type[BaseModel]) -> list[str]:
    """Properties of ``model``'s JSON schema (nested models included) lacking a description."""
    schema = model.model_json_schema()
    missing = []
    definitions = {model.__name__: schema, **schema.get("$defs", {})}
    for owner, definition in definitions.items():
        for field, spec in definition.get("properties", {}).items():
            if not spec.get("description"):
                missing.append(f"{owner}.{field}")
    return missing


def builtin_analyzers() -> list[tuple[str, Analyzer]]:
    """Every analyzer the built-in plugins register, as the host accepted them.

    Modules that fail to load are left out here; the import test below reports them.
    """
    host = AnalyzerHost(PluginSettings(entry_points=False))
    listing = host.listing()
    accepted = {a.name for p in listing.plugins if p.builtin for a in p.analyzers}
    analyzers = []
    for module_name in BUILTIN_PLUGINS:
        if module_name.rsplit(".", 1)[-1] in host.failed_to_load:
            continue
        module = importlib.import_module(module_name)
        register = module.register_analyzers
        # as pluggy does: only the arguments the implementation names
        wanted = inspect.signature(register).parameters
        kwargs = {"settings": AnalyzerSettings()} if "settings" in wanted else {}
        analyzers.extend(
            (module_name, analyzer) for analyzer in register(**kwargs) if analyzer.name in accepted
        )
    return analyzers


# ---------------------------------------------------------------------------- the meta-tests


def test_every_hook_spec_is_documented() -> None:
    specs = hook_specs(hookspecs)
    assert specs, "plugins/hookspecs.py declares no hook spec"
    assert undocumented(specs) == []


def test_every_hook_spec_is_exercised_by_a_test() -> None:
    assert unexercised(hook_specs(hookspecs), read_test_sources()) == []


@pytest.mark.parametrize("module_name", BUILTIN_PLUGINS)
def test_builtin_plugin_modules_import_and_document_their_hooks(module_name: str) -> None:
    host = AnalyzerHost(PluginSettings(entry_points=False), builtin_plugins=(module_name,))
    assert dict(host.failed_to_load) == {}
    assert host.listing().refused_analyzers == []
    module = importlib.import_module(module_name)
    assert inspect.getdoc(module), f"{module_name} has no module docstring"
    implemented = [name for name in hook_specs(hookspecs) if callable(getattr(module, name, None))]
    assert implemented, f"{module_name} implements no hook"
    for name in implemented:
        assert inspect.getdoc(getattr(module, name)), f"{module_name}.{name} has no docstring"


@pytest.mark.parametrize(
    ("module_name", "analyzer"), builtin_analyzers(), ids=lambda value: getattr(value, "name", "")
)
def test_builtin_analyzers_document_themselves_and_every_result_field(
    module_name: str, analyzer: Analyzer
) -> None:
    cls = type(analyzer)
    assert cls.__doc__ and len(cls.__doc__.split()) >= 5, f"{cls.__name__} has no docstring"
    assert inspect.getdoc(cls.analyze) != inspect.getdoc(Analyzer.analyze), (
        f"{cls.__name__}.analyze has no docstring of its own"
    )
    assert schema_fields_without_description(analyzer.result_model) == []
    if analyzer.options_model is not None:
        assert schema_fields_without_description(analyzer.options_model) == []


# -------------------------------------------------- the checks above can fail (self-tests)


def test_the_checks_flag_an_undocumented_untested_hook_and_undescribed_fields() -> None:
    spec = hookspecs.hookspec

    @spec
    def brand_new_hook(study_id: str) -> None:
        pass

    @spec
    def documented_hook(study_id: str, extra: int) -> None:
        """Something happened to a study.

        Args:
            study_id: the study.
        """

    fake = types.ModuleType("fake_specs")
    fake.brand_new_hook = brand_new_hook  # type: ignore[attr-defined]
    fake.documented_hook = documented_hook  # type: ignore[attr-defined]
    specs = hook_specs(fake)
    assert set(specs) == {"brand_new_hook", "documented_hook"}
    assert undocumented(specs) == [
        "brand_new_hook: no docstring",
        "documented_hook: argument 'extra' not described under Args",
    ]
    sources = {
        "a.py": "host.plugin_manager.hook.documented_hook(study_id='x')",
        "b.py": "@hookimpl\ndef brand_new_hook_v2(study_id):\n    pass\n",
    }
    assert unexercised(specs, sources) == ["brand_new_hook"]
    sources["c.py"] = "@hookimpl(tryfirst=True)\n@other\ndef brand_new_hook(study_id):\n"
    assert unexercised(specs, sources) == []

    class Inner(BaseModel):
        described: int = Field(description="yes")
        bare: int

    class Outer(BaseModel):
        inner: Inner = Field(description="nested")
        plain: str

    assert schema_fields_without_description(Outer) == ["Outer.plain", "Inner.bare"]
