"""The analyzer host: loading, isolation, ordering, needs, options, artefacts, hooks, tracing."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from plugins.analyzer import AnalysisContext, Analyzer, Need
from plugins.hookspecs import hookimpl
from plugins.host import BUILTIN_PLUGINS, AnalyzerHost, AnalyzerOptionsError
from plugins.settings import PluginSettings
from plugins.testing import MemoryArtefactSink, study_inputs
from schemas.analyzers import AnalyzerOutcome

BUILTIN_ANALYZERS = {module.rsplit(".", 1)[1] for module in BUILTIN_PLUGINS}

NO_ENTRY_POINTS = PluginSettings(entry_points=False)


class Number(BaseModel):
    value: float


class Other(BaseModel):
    text: str


def _labels() -> np.ndarray:
    labels = np.zeros((24, 24, 24), dtype=np.uint8)
    labels[4:10, 4:10, 4:10] = 1
    labels[12:20, 12:20, 12:20] = 2
    labels[6:8, 6:8, 6:8] = 3
    return labels


def analyzer(
    name: str,
    run: Any = None,
    *,
    result_model: type[BaseModel] = Number,
    depends_on: tuple[str, ...] = (),
    needs: frozenset[Need] = frozenset(),
    timeout_s: float = 5.0,
    options_model: type[BaseModel] | None = None,
) -> Analyzer:
    """An analyzer instance whose ``analyze`` calls ``run(context)`` (default: value 1)."""

    def analyze(self: Analyzer, context: AnalysisContext) -> BaseModel:
        return run(context) if run is not None else Number(value=1.0)

    cls = type(
        f"Test_{name}",
        (Analyzer,),
        {
            "__doc__": f"Test analyzer {name}.",
            "name": name,
            "version": "9.9",
            "result_model": result_model,
            "options_model": options_model,
            "depends_on": depends_on,
            "needs": needs,
            "timeout_s": timeout_s,
            "analyze": analyze,
        },
    )
    instance: Analyzer = cls()
    return instance


class Provides:
    """A plugin object registering the given analyzers."""

    def __init__(self, *analyzers: object) -> None:
        self.analyzers = list(analyzers)

    @hookimpl
    def register_analyzers(self) -> list[object]:
        return self.analyzers


def make_host(*analyzers: object, settings: PluginSettings = NO_ENTRY_POINTS, **plugins: object):
    extra: dict[str, object] = {"tests": Provides(*analyzers)} if analyzers else {}
    extra.update(plugins)
    return AnalyzerHost(settings, builtin_plugins=(), extra_plugins=extra)


def run(host: AnalyzerHost, **kwargs: Any) -> dict[str, AnalyzerOutcome]:
    return host.run(study_inputs(_labels()), artefacts=MemoryArtefactSink(), **kwargs)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown so slow test analyzers stop waiting."""
    event = threading.Event()
    yield event
    event.set()


def test_builtin_volumetrics_is_registered_listed_and_run() -> None:
    host = AnalyzerHost(NO_ENTRY_POINTS)
    listing = host.listing()
    (plugin,) = [p for p in listing.plugins if p.name == "volumetrics"]
    assert plugin.builtin
    assert plugin.version == importlib.metadata.version("cerebrascan")
    (info,) = plugin.analyzers
    assert info.needs == ["images", "segmentation"]
    assert {"volumes_ml", "rano", "sphericity"} <= set(info.result_schema["properties"])
    assert info.options_schema is not None
    assert info.description and info.description.startswith("Tumour volumes")
    outcome = run(host)["volumetrics"]
    assert outcome.status == "ok", outcome.error
    assert outcome.plugin == "volumetrics"
    assert outcome.version == "1.0.0"
    assert outcome.result is not None
    assert outcome.result["volumes_ml"]["ET"] == pytest.approx(8 / 1000)


def test_builtin_module_that_fails_to_import_is_skipped_and_recorded() -> None:
    host = AnalyzerHost(
        NO_ENTRY_POINTS,
        builtin_plugins=("plugins.builtin.volumetrics", "plugins.builtin.no_such_plugin"),
    )
    assert "ModuleNotFoundError" in host.failed_to_load["no_such_plugin"]
    assert host.listing().failed_to_load == dict(host.failed_to_load)
    assert run(host)["volumetrics"].status == "ok"


def test_each_failure_becomes_that_analyzer_error_and_the_rest_stays_intact(
    release: threading.Event,
) -> None:
    def boom(context: AnalysisContext) -> BaseModel:
        raise RuntimeError("kaboom at voxel (3, 4, 5)")

    def slow(context: AnalysisContext) -> BaseModel:
        release.wait(10)
        return Number(value=2.0)

    def invalid(context: AnalysisContext) -> BaseModel:
        return Number.model_construct(value="not a number")

    host = AnalyzerHost(
        NO_ENTRY_POINTS,
        extra_plugins={
            "tests": Provides(
                analyzer("good", lambda c: Number(value=42.0)),
                analyzer("boom", boom),
                analyzer("slow", slow, timeout_s=0.2),
                analyzer("wrong_type", lambda c: {"value": 1.0}),
                analyzer("other_model", lambda c: Other(text="x")),
                analyzer("invalid", invalid),
                analyzer("after_boom", depends_on=("boom",)),
                analyzer("after_good", depends_on=("good",)),
            )
        },
    )
    outcomes = run(host)
    assert outcomes["volumetrics"].status == "ok"
    assert outcomes["good"].status == "ok"
    assert outcomes["good"].result == {"value": 42.0}
    assert outcomes["boom"].status == "error"
    assert outcomes["boom"].error == "RuntimeError: kaboom at voxel (3, 4, 5)"
    assert outcomes["slow"].status == "error"
    assert outcomes["slow"].error == "timed out after 0.2 s"
    assert outcomes["slow"].duration_ms == pytest.approx(200, abs=150)
    assert outcomes["wrong_type"].error == "returned dict, expected an instance of Number"
    assert outcomes["other_model"].error == "returned Other, expected an instance of Number"
    assert outcomes["invalid"].status == "error"
    assert outcomes["invalid"].error.startswith("result failed validation")
    assert outcomes["after_boom"].status == "skipped"
    assert outcomes["after_boom"].error == "dependency 'boom' (error)"
    assert outcomes["after_good"].status == "ok"
    for name, outcome in outcomes.items():
        assert outcome.name == name
        assert outcome.duration_ms >= 0
        if name in BUILTIN_ANALYZERS:  # built-ins get a study without images here: they error
            continue
        assert outcome.version == "9.9"
        assert (outcome.result is None) == (outcome.status != "ok")


def test_timeout_setting_overrides_the_declared_limit(release: threading.Event) -> None:
    host = make_host(
        analyzer("slow", lambda c: Number(value=release.wait(10))),
        settings=PluginSettings(entry_points=False, timeouts={"slow": 0.1}),
    )
    assert host.listing().plugins[0].analyzers[0].timeout_s == 0.1
    assert run(host)["slow"].error == "timed out after 0.1 s"


def test_context_holds_only_declared_needs_and_dependency_results() -> None:
    seen: dict[str, AnalysisContext] = {}

    def record(context: AnalysisContext) -> BaseModel:
        seen["context"] = context
        return Number(value=0.0)

    host = make_host(
        analyzer("first", lambda c: Number(value=1.0)),
        analyzer("unrelated", lambda c: Number(value=2.0)),
        analyzer("reader", record, needs=frozenset({Need.SEGMENTATION}), depends_on=("first",)),
    )
    images = np.ones((4, 24, 24, 24), dtype=np.float32)
    probabilities = np.zeros((4, 24, 24, 24), dtype=np.float16)
    inputs = study_inputs(_labels(), images=images, probabilities=probabilities)
    host.run(inputs, artefacts=MemoryArtefactSink(), options={"reader": {"k": 1}})
    context = seen["context"]
    assert context.segmentation is not None
    assert np.array_equal(context.segmentation, _labels())
    assert context.images is None
    assert context.probabilities is None
    assert context.tta_disagreement is None
    assert set(context.results) == {"first"}
    assert context.results["first"] == Number(value=1.0)
    assert dict(context.options) == {"k": 1}
    with pytest.raises(ValueError, match="read-only"):
        context.segmentation[0, 0, 0] = 3
    assert host.needs == frozenset({Need.SEGMENTATION})


def test_analyzers_run_dependencies_first_and_unrunnable_ones_are_reported() -> None:
    order: list[str] = []

    def tracked(name: str, **kwargs: Any) -> Analyzer:
        def body(context: AnalysisContext) -> BaseModel:
            order.append(name)
            return Number(value=len(context.results))

        return analyzer(name, body, **kwargs)

    host = make_host(
        tracked("c", depends_on=("b", "a")),
        tracked("b", depends_on=("a",)),
        tracked("a"),
        tracked("x", depends_on=("y",)),
        tracked("y", depends_on=("x",)),
        tracked("w", depends_on=("x",)),
        tracked("z", depends_on=("missing",)),
        tracked("after_z", depends_on=("z",)),
    )
    outcomes = run(host)
    assert order == ["a", "b", "c"]
    assert list(outcomes)[:3] == ["a", "b", "c"]
    assert outcomes["c"].result == {"value": 2.0}
    assert outcomes["x"].status == "error"
    assert outcomes["x"].error == "dependency cycle: x -> y -> x"
    assert outcomes["y"].error == "dependency cycle: y -> x -> y"
    assert outcomes["w"].status == "skipped"
    assert outcomes["w"].error == "dependency 'x' cannot run"
    assert outcomes["z"].status == "error"
    assert "unknown analyzer(s) ['missing']" in (outcomes["z"].error or "")
    assert outcomes["after_z"].status == "skipped"
    infos = {a.name: a for a in host.listing().plugins[0].analyzers}
    assert infos["x"].unavailable == "dependency cycle: x -> y -> x"
    assert infos["a"].unavailable is None


def test_duplicate_names_are_refused_and_the_first_wins() -> None:
    host = make_host(
        analyzer("dup", lambda c: Number(value=1.0)),
        second=Provides(analyzer("dup", lambda c: Number(value=2.0))),
    )
    assert run(host)["dup"].result == {"value": 1.0}
    (refused,) = host.listing().refused_analyzers
    assert (refused.name, refused.plugin) == ("dup", "second")
    assert refused.reason == "name already registered by plugin 'tests'"


class NotAModel:
    pass


@pytest.mark.parametrize(
    ("offer", "reason"),
    [
        (analyzer("Bad-Name"), "must match"),
        (analyzer("no_model", result_model=NotAModel), "result_model must be a pydantic"),
        (analyzer("bad_timeout", timeout_s=0), "timeout_s must be a positive"),
        (analyzer("self_dep", depends_on=("self_dep",)), "names the analyzer itself"),
        (object(), "object is not an instance of plugins.analyzer.Analyzer"),
    ],
)
def test_invalid_declarations_are_refused(offer: object, reason: str) -> None:
    host = make_host(offer, analyzer("fine"))
    (refused,) = host.listing().refused_analyzers
    assert reason in refused.reason
    assert run(host)["fine"].status == "ok"


class Typo:
    @hookimpl
    def register_analyzer(self) -> list[Analyzer]:  # missing "s": matches no hook spec
        return [analyzer("never")]


class BrokenRegistration:
    @hookimpl
    def register_analyzers(self) -> list[Analyzer]:
        raise ImportError("optional dependency 'torchio' is missing")


def test_plugins_with_unknown_hooks_or_failing_registration_are_not_loaded() -> None:
    host = make_host(analyzer("fine"), typo=Typo(), broken=BrokenRegistration())
    failed = host.failed_to_load
    assert "unknown hook(s) ['register_analyzer']" in failed["typo"]
    assert failed["broken"] == (
        "register_analyzers failed: ImportError: optional dependency 'torchio' is missing"
    )
    assert [p.name for p in host.listing().plugins] == ["tests"]
    assert run(host)["fine"].status == "ok"


def test_allow_and_block_lists_select_plugins() -> None:
    extra = {"tests": Provides(analyzer("mine"))}
    blocked = AnalyzerHost(
        PluginSettings(entry_points=False, block=sorted(BUILTIN_ANALYZERS)),
        extra_plugins=extra,
    )
    assert blocked.analyzer_names == ("mine",)
    allowed = AnalyzerHost(
        PluginSettings(entry_points=False, allow=["volumetrics"]), extra_plugins=extra
    )
    assert allowed.analyzer_names == ("volumetrics",)
    both = AnalyzerHost(
        PluginSettings(entry_points=False, allow=["tests"], block=["tests"]), extra_plugins=extra
    )
    assert both.analyzer_names == ()


class Observer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, AnalyzerOutcome]]] = []

    @hookimpl
    def analysis_completed(self, study_id: str, outcomes: dict[str, AnalyzerOutcome]) -> None:
        self.calls.append((study_id, dict(outcomes)))
        for outcome in outcomes.values():
            outcome.status = "error"  # observers get copies: this must not leak


class FailingObserver:
    @hookimpl
    def analysis_completed(self, study_id: str, outcomes: dict[str, AnalyzerOutcome]) -> None:
        raise RuntimeError("observer is down")


def test_analysis_completed_sees_every_outcome_and_cannot_break_the_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    observer = Observer()
    # the failing observer registers last, so pluggy would call it first
    host = make_host(analyzer("one"), observer=observer, failing=FailingObserver())
    with caplog.at_level(logging.WARNING, logger="plugins.host"):
        outcomes = run(host)
    assert outcomes["one"].status == "ok"
    ((study_id, seen),) = observer.calls
    assert study_id == "0" * 32
    assert set(seen) == {"one"}
    assert "plugin 'failing': analysis_completed raised" in caplog.text
    hook = host.plugin_manager.hook
    assert len(hook.analysis_completed.get_hookimpls()) == 2


def test_tracing_logs_every_hook_call_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="plugins.host.trace"):
        host = make_host(
            analyzer("one"),
            settings=PluginSettings(entry_points=False, trace=True),
            observer=Observer(),
        )
        run(host)
    traced = [r.getMessage() for r in caplog.records if r.name == "plugins.host.trace"]
    assert any(m.startswith("hook register_analyzers -> ['tests']") for m in traced)
    assert any(m.startswith("hook analysis_completed -> ['observer']") for m in traced)
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name.endswith("trace"))
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="plugins.host.trace"):
        run(make_host(analyzer("one")))
    assert not [r for r in caplog.records if r.name == "plugins.host.trace"]


class Threshold(BaseModel):
    model_config = {"extra": "forbid"}
    level: float = 0.5


def test_options_are_validated_defaulted_and_passed_to_their_analyzer() -> None:
    seen: dict[str, Any] = {}

    def record(context: AnalysisContext) -> BaseModel:
        seen.update(context.options)
        return Number(value=0.0)

    host = make_host(analyzer("typed", record, options_model=Threshold))
    run(host)
    assert seen == {"level": 0.5}
    run(host, options={"typed": {"level": 0.9}})
    assert seen == {"level": 0.9}
    with pytest.raises(AnalyzerOptionsError, match=r"unknown analyzer\(s\) \['nope'\]"):
        host.validate_options({"nope": {}})
    with pytest.raises(AnalyzerOptionsError, match=r"analyzers\.typed: level: Input should be"):
        host.validate_options({"typed": {"level": "high"}})
    with pytest.raises(AnalyzerOptionsError, match=r"analyzers\.typed: colour: Extra inputs"):
        host.validate_options({"typed": {"colour": "red"}})


def test_artefacts_are_owned_by_their_first_writer_and_listed(
    release: threading.Event,
) -> None:
    late: dict[str, BaseException] = {}
    finished = threading.Event()

    def write(name: str) -> Any:
        def body(context: AnalysisContext) -> BaseModel:
            context.artefacts.write_nifti(
                name, np.zeros((24, 24, 24), np.uint8), description="zeros"
            )
            return Number(value=0.0)

        return body

    def write_late(context: AnalysisContext) -> BaseModel:
        release.wait(10)
        try:
            context.artefacts.write_nifti("late", np.zeros((24, 24, 24)), description="late")
        except RuntimeError as exc:
            late["error"] = exc
        finished.set()
        return Number(value=0.0)

    host = make_host(
        analyzer("writer", write("map")),
        analyzer("thief", write("map")),
        analyzer("tardy", write_late, timeout_s=0.1),
    )
    sink = MemoryArtefactSink(shape=(24, 24, 24))
    outcomes = host.run(study_inputs(_labels()), artefacts=sink)
    (link,) = outcomes["writer"].artefacts
    assert (link.name, link.url, link.description) == ("map", "memory://map", "zeros")
    assert outcomes["thief"].status == "error"
    assert (
        outcomes["thief"].error
        == "ValueError: artefact 'map' was already written by analyzer 'writer'"
    )
    release.set()
    assert finished.wait(5)
    assert "its time is up" in str(late["error"])
    assert set(sink.arrays) == {"map"}


def _fake_distribution(root: Path, name: str, version: str, entry_points: dict[str, str]) -> None:
    """A minimal installed distribution (dist-info with entry points) under ``root``."""
    dist_info = root / f"{name}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    )
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[cerebrascan]\n{lines}")


@pytest.fixture
def installed_plugins(tmp_path: Path) -> Iterator[Path]:
    """Two entry-point plugins on sys.path: one that imports, one whose import raises."""
    (tmp_path / "cs_test_working.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel
            from plugins.analyzer import Analyzer
            from plugins.hookspecs import hookimpl

            class Count(BaseModel):
                count: int

            class Working(Analyzer):
                '''Counts tumour voxels.'''
                name = "working"
                version = "1.0"
                result_model = Count
                needs = frozenset({"segmentation"})

                def analyze(self, context):
                    return Count(count=int((context.segmentation > 0).sum()))

            @hookimpl
            def register_analyzers():
                return [Working()]
            """
        )
    )
    (tmp_path / "cs_test_broken.py").write_text(
        "raise RuntimeError('this plugin needs a GPU driver')\n"
    )
    _fake_distribution(tmp_path, "cs_test_working", "1.2.3", {"working": "cs_test_working"})
    _fake_distribution(tmp_path, "cs_test_broken", "0.0.1", {"broken": "cs_test_broken"})
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for module in ("cs_test_working", "cs_test_broken"):
        sys.modules.pop(module, None)
    importlib.invalidate_caches()


def test_entry_point_whose_import_fails_is_recorded_and_the_rest_load(
    installed_plugins: Path,
) -> None:
    host = AnalyzerHost(PluginSettings())
    assert host.failed_to_load["broken"] == (
        "import of cs_test_broken failed: RuntimeError: this plugin needs a GPU driver"
    )
    plugins = {p.name: p for p in host.listing().plugins}
    assert plugins["working"].version == "1.2.3"
    assert not plugins["working"].builtin
    outcomes = run(host)
    assert outcomes["working"].result == {"count": int((_labels() > 0).sum())}
    assert outcomes["volumetrics"].status == "ok"


def test_blocked_entry_point_is_never_imported(installed_plugins: Path) -> None:
    sys.modules.pop("cs_test_broken", None)
    host = AnalyzerHost(PluginSettings(block=["broken"]))
    assert "broken" not in host.failed_to_load
    assert "cs_test_broken" not in sys.modules
    assert "working" in host.analyzer_names
    no_discovery = AnalyzerHost(PluginSettings(entry_points=False))
    assert "working" not in no_discovery.analyzer_names


def test_reload_picks_up_a_plugin_installed_after_start(tmp_path: Path) -> None:
    host = AnalyzerHost(PluginSettings())
    assert "working" not in host.analyzer_names
    (tmp_path / "cs_test_late.py").write_text(
        "from plugins.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def register_analyzers():\n"
        "    return []\n"
    )
    _fake_distribution(tmp_path, "cs_test_late", "2.0", {"late": "cs_test_late"})
    sys.path.insert(0, str(tmp_path))
    try:
        host.reload()
        assert "late" in {p.name for p in host.listing().plugins}
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("cs_test_late", None)
        host.reload()
    assert "late" not in {p.name for p in host.listing().plugins}
