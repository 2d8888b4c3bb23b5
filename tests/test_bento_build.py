"""``bentoml build`` of the CPU and GPU bentos: contents, pinned requirements, Dockerfile.

The bentos are built into a temporary ``BENTOML_HOME``; ``bentoml build`` downloads nothing
(``lock_packages: false``, the requirements are already pinned by requirements/lock_bento.py).
Containerising (which installs the packages) is not run here: it needs Docker and the network.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

BENTOML = Path(sys.executable).with_name("bentoml")
VARIANTS = {"cpu": "bentofile.yaml", "gpu": "bentofile.gpu.yaml"}


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


@pytest.fixture(scope="module")
def bentos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Variant -> folder of the built bento."""
    home = tmp_path_factory.mktemp("bentoml-home")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    built = {}
    for variant, bentofile in VARIANTS.items():
        result = subprocess.run(
            [str(BENTOML), "build", "-f", bentofile, "--output", "tag", "."],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        tag = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
        name, version = tag.split(":")
        built[variant] = home / "bentos" / name / version
        assert built[variant].is_dir(), tag
    return built


@pytest.mark.parametrize("variant", VARIANTS)
def test_bento_holds_the_code_and_default_model(bentos: dict[str, Path], variant: str) -> None:
    src = bentos[variant] / "src"
    for path in (
        "service.py",
        "runner.py",
        "cerebrascan/serving/http/auth.py",
        "runners",
        "schemas",
        "plugins",
    ):
        assert (src / path).exists(), path
    for name in ("model.onnx", "model_spec.json", "model_card.md", "metrics.json"):
        packed = src / "models" / "default" / name
        original = REPO_ROOT / "models" / "default" / name
        assert (
            hashlib.sha256(packed.read_bytes()).digest()
            == hashlib.sha256(original.read_bytes()).digest()
        ), name
    for absent in ("tests", "data", "cerebrascan/training", "cerebrascan/phantoms"):
        assert not (src / absent).exists(), absent
    info = yaml.safe_load((bentos[variant] / "bento.yaml").read_text())
    assert info["labels"]["intended_use"] == "research-only"


@pytest.mark.parametrize("variant", VARIANTS)
def test_bento_holds_every_package_data_file(bentos: dict[str, Path], variant: str) -> None:
    package_data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    expected = [
        path.relative_to(REPO_ROOT)
        for package, patterns in package_data.items()
        for pattern in patterns
        for path in (REPO_ROOT / package.replace(".", "/")).glob(pattern)
    ]
    assert expected
    missing = [str(p) for p in expected if not (bentos[variant] / "src" / p).is_file()]
    assert not missing, f"add to {VARIANTS[variant]} include: {missing}"


def test_bento_source_imports_without_the_repository(
    bentos: dict[str, Path], tmp_path: Path
) -> None:
    # the editable install's finder would import from the repository: drop it and the repo
    probe = (
        "import sys; "
        f"sys.path = [{str(bentos['cpu'] / 'src')!r}] + "
        f"[p for p in sys.path if 'site-packages' in p or 'python3' in p]; "
        "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
        "import service, cerebrascan; "
        "assert cerebrascan.__file__.startswith(sys.path[0]), cerebrascan.__file__; "
        "print(sorted(service.CerebraScan.apis)); "
        "from runners.factory import resolve_engine; "
        "from cerebrascan.settings import Settings; "
        "print('engine', resolve_engine(Settings().runner))"
    )
    # the bento's own environment (bentofile envs), data folder aside
    info = yaml.safe_load((bentos["cpu"] / "bento.yaml").read_text())
    bento_env = {env["name"]: str(env["value"]) for env in info["envs"]}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, **bento_env, "CEREBRASCAN_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "analyze" in result.stdout
    assert "engine openvino" in result.stdout  # the CPU bento serves with OpenVINO


@pytest.mark.parametrize("variant", VARIANTS)
def test_requirements_are_all_pinned_to_the_constraints(
    bentos: dict[str, Path], variant: str
) -> None:
    packed = _pins((bentos[variant] / "env" / "python" / "requirements.txt").read_text())
    constraints = _pins((REPO_ROOT / "constraints.txt").read_text())
    unpinned = [name for name, version in packed.items() if not version]
    assert not unpinned
    differing = {n: (v, constraints.get(n)) for n, v in packed.items() if constraints.get(n) != v}
    assert not differing, "bento pin != constraints.txt pin"
    assert packed["bentoml"] and packed["mlflow"] and packed["boto3"]
    assert "torch" not in packed  # serving is torch-free
    if variant == "cpu":
        assert "onnxruntime" in packed and "onnxruntime-gpu" not in packed
        assert "openvino" in packed  # what runner.engine auto serves with on a CPU
        info = yaml.safe_load((bentos[variant] / "bento.yaml").read_text())
        envs = {env["name"]: env["value"] for env in info["envs"]}
        assert envs["CEREBRASCAN_RUNNER__ENGINE"] == "auto"
        assert envs["CEREBRASCAN_RUNNER__PRECISION"] == "auto"
    else:
        assert "onnxruntime-gpu" in packed and "onnxruntime" not in packed
        assert "tensorrt-cu12" in packed and "tensorrt-cu12-libs" in packed


def test_requirement_files_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "requirements/lock_bento.py", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_dockerfile_installs_pins_then_atlas_without_deps(
    bentos: dict[str, Path], variant: str
) -> None:
    docker = bentos[variant] / "env" / "docker"
    dockerfile = (docker / "Dockerfile").read_text()
    base = "python:3.11-slim" if variant == "cpu" else "nvidia/cuda:12.8.1-cudnn-runtime"
    assert re.search(rf"^FROM {re.escape(base)}", dockerfile, re.MULTILINE), dockerfile[:400]
    assert "uv venv --python 3.11" in dockerfile
    install = dockerfile.index("pip install -r $BENTO_PATH/env/python/requirements.txt")
    scripts = list(docker.glob("script__*"))
    assert len(scripts) == 1
    assert dockerfile.index(scripts[0].name) > install  # atlas after the pinned packages
    assert scripts[0].read_text() == (REPO_ROOT / "deploy" / "bento_setup.sh").read_text()
    assert 'ENTRYPOINT [ "/home/bentoml/bento/env/docker/entrypoint.sh" ]' in dockerfile


def test_setup_script_installs_exactly_the_atlas_pins() -> None:
    script = (REPO_ROOT / "deploy" / "bento_setup.sh").read_text()
    atlas = _pins((REPO_ROOT / "requirements" / "atlas.txt").read_text())
    installed = dict(
        (re.sub(r"[-_.]+", "-", n).lower(), v)
        for n, v in re.findall(r'"([A-Za-z0-9_.\-]+)==([^"]+)"', script)
    )
    assert installed == atlas
    assert "--no-deps" in script
