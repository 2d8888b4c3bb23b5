"""Imported nnU-Net v2 models: parity with nnunetv2's own ``nnUNetPredictor`` and refusals.

Real tiny nnU-Net models are built once per session with nnunetv2 itself: two phantom cases
downsampled to 3 mm are written in nnU-Net's raw format, nnunetv2 extracts the fingerprint and
plans the experiment (its ``ExperimentPlanner``), the 3d_fullres configuration is shrunk (patch
32^3, 3 stages, 4-16 features), and two folds are briefly fitted on cases run through nnunetv2's
``DefaultPreprocessor`` and saved in nnU-Net's checkpoint format. Both a label-based (softmax
NETC/SNFH/ET) and a region-based (sigmoid WT/TC/ET with ``regions_class_order``) model are
built; they share the fingerprint, the plans and the preprocessed cases (the same images and
foreground), and differ in dataset.json, output heads and weights.

The unseen test images are a 144 mm cube of the other phantom around its tumour (two 32^3 tiles
per axis at 3 mm, overlapping): every behaviour of a whole head (crop to non-zero, resampling,
tiling with Gaussian weights, mirroring) at a quarter of its sliding-window cost.

nnU-Net 2.8 accumulates sliding-window logits in float16 even on CPU. The parity checks run
its predictor with that accumulator (and the Gaussian) switched to float32, which is what
CerebraScan computes; ``test_parity_against_unpatched_fp16_predictor`` bounds the difference to
the stock fp16 predictor separately.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("nnunetv2")
torch = pytest.importorskip("torch")

from cerebrascan.inputs.study import Study  # noqa: E402
from cerebrascan.segmentation import segment_study  # noqa: E402
from cerebrascan.settings import Settings  # noqa: E402
from cerebrascan.testing.nnunet_reference import (  # noqa: E402
    fp32_accumulation,
    quiet_predictor,
)
from cerebrascan.training.nnunet_import import (  # noqa: E402
    NnunetImportError,
    build_nnunet_model_folder,
    import_nnunet_folder,
)
from runners.factory import build_runner  # noqa: E402
from runners.settings import RunnerSettings  # noqa: E402
from schemas.model_spec import ModelSpec  # noqa: E402

MODALITIES = ("t1n", "t1c", "t2w", "t2f")
CHANNEL_NAMES = {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
LABELS = {"background": 0, "NETC": 1, "SNFH": 2, "ET": 3}
REGION_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3], "ET": [3]}
DICE_MIN = 0.99
PROB_MAX = 1e-3
TEST_CUBE_MM = 144
"""Edge of the test images' cube around the tumour: 48 voxels at 3 mm, two overlapping tiles."""


def _nnunet_env(root: Path) -> None:
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / var).mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(root / var)


def _load_case(folder: Path, step: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    case_id = folder.name
    sl = tuple(slice(None, None, s) for s in step)
    images = np.stack(
        [
            np.asarray(nib.load(folder / f"{case_id}-{m}.nii.gz").dataobj, dtype=np.float32)[sl]
            for m in MODALITIES
        ]
    )
    seg = np.asarray(nib.load(folder / f"{case_id}-seg.nii.gz").dataobj, dtype=np.uint8)[sl]
    return images, seg


def _write_nifti(array: np.ndarray, spacing: tuple[float, ...], path: Path) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))


def _shrink_plans(plans: dict[str, Any]) -> dict[str, Any]:
    config = plans["configurations"]["3d_fullres"]
    config["patch_size"] = [32, 32, 32]
    config["batch_size"] = 2
    arch = config["architecture"]["arch_kwargs"]
    arch.update(
        n_stages=3,
        features_per_stage=[4, 8, 16],
        kernel_sizes=[[3, 3, 3]] * 3,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        n_conv_per_stage=[1, 1, 1],
        n_conv_per_stage_decoder=[1, 1],
    )
    plans["configurations"] = {"3d_fullres": config}
    return plans


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """torch on one thread for a block: a 4-16 feature network on 32^3 crops gains nothing from
    more, and on a busy machine torch's waiting threads cost more than the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _fingerprint_workers_in_threads() -> Iterator[None]:
    """nnU-Net's fingerprint extractor runs ``analyze_case`` in a thread pool for a block.

    Its own pool spawns a fresh interpreter that imports torch and nnunetv2 again before it runs
    the same function on the same files: on a busy 2-core machine that start took minutes."""
    from multiprocessing.pool import ThreadPool
    from types import SimpleNamespace

    from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor

    saved = fingerprint_extractor.multiprocessing
    fingerprint_extractor.multiprocessing = SimpleNamespace(  # type: ignore[assignment]
        get_context=lambda method: SimpleNamespace(Pool=ThreadPool)
    )
    try:
        yield
    finally:
        fingerprint_extractor.multiprocessing = saved


def _extract_fingerprint(dataset_id: int) -> None:
    """nnunetv2's dataset fingerprint, its worker in a thread (see
    :func:`_fingerprint_workers_in_threads`), with 1e5 instead of 1e8 foreground intensities
    sampled (with replacement) for the intensity statistics: only CT normalisation reads those,
    these models normalise by z-score (``test_spec_records_nnunet_contract``), and 1e8 samples
    took a minute."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset

    class FewerIntensitySamples(DatasetFingerprintExtractor):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.num_foreground_voxels_for_intensitystats = 1e5

    with _fingerprint_workers_in_threads():
        extract_fingerprint_dataset(
            dataset_id, FewerIntensitySamples, num_processes=1, check_dataset_integrity=False
        )


def _fit_fold(
    network: Any, cases: list[tuple[np.ndarray, np.ndarray]], regions: bool, seed: int
) -> None:
    """A few Adam steps on random 32^3 crops so the network's output is not noise."""
    with _one_torch_thread():
        _fit_steps(network, cases, regions, seed)
    network.eval()


def _fit_steps(
    network: Any, cases: list[tuple[np.ndarray, np.ndarray]], regions: bool, seed: int
) -> None:
    generator = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(network.parameters(), lr=3e-3)
    network.train()
    for _ in range(25):
        xs, ys = [], []
        for data, seg in cases:
            starts = [int(generator.integers(0, s - 32 + 1)) for s in data.shape[1:]]
            sl = tuple(slice(s, s + 32) for s in starts)
            xs.append(data[(slice(None), *sl)])
            ys.append(np.maximum(seg[0][sl], 0))
        x = torch.from_numpy(np.stack(xs))
        y = torch.from_numpy(np.stack(ys)).long()
        out = network(x)
        if regions:
            target = torch.stack([(y > 0), (y == 1) | (y == 3), y == 3], dim=1).float()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out, target)
        else:
            loss = torch.nn.functional.cross_entropy(out, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def _write_raw_dataset(raw: Path, phantom_cases: list[Path], dataset_json: dict[str, Any]) -> None:
    """The phantom cases at 3 mm in nnU-Net's raw format (``imagesTr``, ``labelsTr``)."""
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for index, folder in enumerate(phantom_cases):
        images, seg = _load_case(folder, (3, 3, 3))
        for c in range(images.shape[0]):
            _write_nifti(images[c], (3.0, 3.0, 3.0), raw / "imagesTr" / f"c{index}_{c:04d}.nii.gz")
        _write_nifti(seg, (3.0, 3.0, 3.0), raw / "labelsTr" / f"c{index}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps(dataset_json))


def _dataset_json(n_cases: int, *, regions: bool) -> dict[str, Any]:
    dataset_json: dict[str, Any] = {
        "channel_names": CHANNEL_NAMES,
        "labels": REGION_LABELS if regions else LABELS,
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
    }
    if regions:
        dataset_json["regions_class_order"] = [2, 1, 3]
    return dataset_json


def _save_model(
    out: Path,
    plans: dict[str, Any],
    dataset_json: dict[str, Any],
    cases: list[tuple[np.ndarray, np.ndarray]],
    *,
    regions: bool,
) -> Path:
    """Folds 0 and 1 of one model fitted on ``cases``, in nnU-Net's results layout."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    config = plans_manager.get_configuration("3d_fullres")
    label_manager = plans_manager.get_label_manager(dataset_json)
    out.mkdir(parents=True)
    (out / "plans.json").write_text(json.dumps(plans, indent=2))
    (out / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    channels = determine_num_input_channels(plans_manager, config, dataset_json)
    for fold in (0, 1):
        # the initial weights too come from the seed, not from whatever tests ran before
        torch.manual_seed(fold)
        network = nnUNetTrainer.build_network_architecture(
            plans_manager,
            config,
            channels,
            label_manager.num_segmentation_heads,
            enable_deep_supervision=False,
        )
        _fit_fold(network, cases, regions, seed=fold)
        (out / f"fold_{fold}").mkdir()
        torch.save(
            {
                "network_weights": network.state_dict(),
                "optimizer_state": None,
                "grad_scaler_state": None,
                "logging": {"ema_fg_dice": [0.5], "epoch_start_timestamps": [0.0]},
                "_best_ema": None,
                "current_epoch": 1,
                "init_args": {
                    "plans": plans,
                    "configuration": "3d_fullres",
                    "fold": fold,
                    "dataset_json": dataset_json,
                    "device": torch.device("cpu"),
                },
                "trainer_name": "nnUNetTrainer",
                "inference_allowed_mirroring_axes": (0, 1, 2),
            },
            out / f"fold_{fold}" / "checkpoint_final.pth",
        )
    return out


def _build_models(root: Path, phantom_cases: list[Path]) -> dict[str, Path]:
    """The label and the region nnU-Net v2 training output folders (see the module docstring).

    nnunetv2 fingerprints and plans the label dataset once (a spawned worker and the planner):
    the region dataset has the same images and the same foreground (label > 0), and the shrunk
    configuration replaces all that its label definitions could change (patch and batch size from
    the memory estimate). The cases are preprocessed once too: nnU-Net keeps labels, not regions,
    in the preprocessed segmentation."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiments
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    names = {"labels": "Dataset990_CerebraTinyLabels", "regions": "Dataset991_CerebraTinyRegions"}
    datasets = {
        kind: _dataset_json(len(phantom_cases), regions=kind == "regions") for kind in names
    }
    raw = root / "nnUNet_raw" / names["labels"]
    _write_raw_dataset(raw, phantom_cases, datasets["labels"])
    _extract_fingerprint(990)
    plan_experiments([990])
    plans_path = root / "nnUNet_preprocessed" / names["labels"] / "nnUNetPlans.json"
    plans = _shrink_plans(json.loads(plans_path.read_text()))
    plans_manager = PlansManager(plans)
    config = plans_manager.get_configuration("3d_fullres")
    preprocessor = DefaultPreprocessor(verbose=False)
    cases = []
    for index in range(len(phantom_cases)):
        images = [str(raw / "imagesTr" / f"c{index}_{c:04d}.nii.gz") for c in range(4)]
        data, seg, _ = preprocessor.run_case(
            images,
            str(raw / "labelsTr" / f"c{index}.nii.gz"),
            plans_manager,
            config,
            datasets["labels"],
        )
        cases.append((data.astype(np.float32), seg))
    models = {}
    for kind, name in names.items():
        model_plans = copy.deepcopy(plans)
        model_plans["dataset_name"] = name
        out = root / "nnUNet_results" / name / "nnUNetTrainer__nnUNetPlans__3d_fullres"
        models[kind] = _save_model(
            out, model_plans, datasets[kind], cases, regions=kind == "regions"
        )
    return models


@pytest.fixture(scope="session")
def nnunet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nnunet")
    _nnunet_env(root)
    return root


@pytest.fixture(scope="session")
def nnunet_models(nnunet_root: Path, phantom_cases: list[Path]) -> dict[str, Path]:
    return _build_models(nnunet_root, phantom_cases)


@pytest.fixture(scope="session")
def label_model(nnunet_models: dict[str, Path]) -> Path:
    return nnunet_models["labels"]


@pytest.fixture(scope="session")
def region_model(nnunet_models: dict[str, Path]) -> Path:
    return nnunet_models["regions"]


@pytest.fixture(scope="session")
def test_cases(phantom_case: Path) -> dict[str, tuple[np.ndarray, tuple[float, float, float]]]:
    """Cases unseen by planning: isotropic 3 mm (crop only), 2.5 x 3 x 4 mm (resampling) and
    3 x 3 x 10 mm (anisotropic: nnU-Net resamples z separately, order 0), each cut from the
    :data:`TEST_CUBE_MM` cube around the phantom's tumour and padded with zeros."""
    images, seg = _load_case(phantom_case, (1, 1, 1))
    centre = np.argwhere(seg > 0).mean(axis=0)  # 1 mm voxels
    box = []
    for c, n in zip(centre, seg.shape, strict=True):
        size = min(TEST_CUBE_MM, n)
        start = int(np.clip(round(c - size / 2), 0, n - size))
        box.append(slice(start, start + size))
    images = images[(slice(None), *box)]
    cases = {"iso3_crop": ((3, 3, 3), (3.0, 3.0, 3.0))}
    cases["aniso_2p5x3x4"] = ((2, 3, 4), (2.0, 3.0, 4.0))
    cases["aniso_3x3x10_sepz"] = ((3, 3, 10), (3.0, 3.0, 10.0))
    out = {}
    for key, (step, spacing) in cases.items():
        sub = images[:, :: step[0], :: step[1], :: step[2]]
        out[key] = (np.ascontiguousarray(np.pad(sub, [(0, 0), (3, 2), (0, 4), (2, 2)])), spacing)
    return out


def _reference(
    model: Path, image: np.ndarray, spacing: tuple[float, ...], mirror: bool, fp32: bool
):
    """nnUNetPredictor on the (x, y, z) image; results back in (x, y, z)."""
    predictor = quiet_predictor(model, (0, 1), mirroring=mirror)
    with _one_torch_thread(), fp32_accumulation() if fp32 else contextlib.nullcontext():
        seg, probs = predictor.predict_single_npy_array(
            image.transpose(0, 3, 2, 1).copy(), {"spacing": list(spacing[::-1])}, None, None, True
        )
    return np.asarray(seg).transpose(2, 1, 0), np.asarray(probs, dtype=np.float32).transpose(
        0, 3, 2, 1
    )


ENGINES = ["onnxruntime", *(["openvino"] if importlib.util.find_spec("openvino") else [])]
"""The CPU engines held to nnUNetPredictor's output (each against the same reference)."""


def _ours(
    folder: Path,
    image: np.ndarray,
    spacing: tuple[float, ...],
    mirror: bool,
    engine: str = "onnxruntime",
):
    spec = ModelSpec.model_validate_json((folder / "model_spec.json").read_text())
    settings = RunnerSettings(tile_step=0.5, tile_batch_size=8, engine=engine)  # type: ignore[arg-type]
    runner = build_runner(folder, spec, settings, folder.parent / "engine-cache")
    study = Study(images=image, affine=np.diag([*spacing, 1.0]), modalities=MODALITIES)
    result = segment_study(study, runner, mirror_tta=mirror, keep_probabilities=True)
    probs = (
        result.region_probabilities
        if spec.output_kind == "sigmoid_regions"
        else (result.probabilities)
    )
    assert probs is not None
    return spec, result.labels, probs.astype(np.float32)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


@pytest.fixture(scope="session")
def imported(label_model: Path, region_model: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("imported")
    return {
        "labels": (label_model, build_nnunet_model_folder(label_model, out / "labels").folder),
        "regions": (region_model, build_nnunet_model_folder(region_model, out / "regions").folder),
    }


MEASURED: dict[str, Any] = {}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["labels", "regions"])
@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("case", ["iso3_crop", "aniso_2p5x3x4", "aniso_3x3x10_sepz"])
def test_parity_with_nnunet_predictor(imported, test_cases, kind, mirror, case) -> None:
    source, folder = imported[kind]
    image, spacing = test_cases[case]
    ref_seg, ref_probs = _reference(source, image, spacing, mirror, fp32=True)
    for engine in ENGINES:  # one (costly) reference, every CPU engine held to it
        spec, labels, probs = _ours(folder, image, spacing, mirror, engine)
        assert labels.shape == ref_seg.shape == image.shape[1:]
        assert probs.shape == ref_probs.shape
        max_diff = float(np.abs(probs - ref_probs).max())
        dices = {
            label: _dice(labels == label, ref_seg == label) for label in spec.output_labels[1:]
        }
        agreement = float((labels == ref_seg).mean())
        MEASURED[f"{engine}/{kind}/{case}/mirror={mirror}"] = (max_diff, dices)
        print(
            f"{engine} {kind} {case} mirror={mirror}: max|dp|={max_diff:.2e} "
            f"labels={agreement:.6f} dice={dices}"
        )
        assert any((ref_seg == label).any() for label in spec.output_labels[1:]), "empty ref"
        assert max_diff <= PROB_MAX, engine
        assert agreement >= 0.999, engine
        assert min(dices.values()) >= DICE_MIN, (engine, dices)


@pytest.mark.slow
def test_parity_against_unpatched_fp16_predictor(imported, test_cases) -> None:
    """The stock predictor (fp16 logit accumulation): labels differ only where it is a near-tie.

    nnU-Net's float16 accumulator moves probabilities by up to ~0.1, so a voxel whose two best
    classes are closer than that can flip either way; Dice of a tiny ET region is no measure of
    that (one flipped voxel of ~20 costs 0.05). Instead: every voxel where the labels disagree
    must be such a near-tie in our fp32 probabilities, and disagreements must be rare."""
    source, folder = imported["labels"]
    image, spacing = test_cases["aniso_2p5x3x4"]
    ref_seg, ref_probs = _reference(source, image, spacing, False, fp32=False)
    _, labels, probs = _ours(folder, image, spacing, False)
    max_diff = float(np.abs(probs - ref_probs).max())
    disagree = labels != ref_seg
    top2 = np.sort(probs.astype(np.float32), axis=0)[-2:]
    margin = (top2[1] - top2[0])[disagree]
    foreground = int(((labels > 0) | (ref_seg > 0)).sum())
    print(
        f"stock fp16 predictor: max|dp|={max_diff:.2e} disagreeing={int(disagree.sum())}"
        f"/{foreground} foreground voxels, widest margin there={margin.max(initial=0.0):.3f}"
    )
    assert foreground > 0, "empty segmentation: the comparison would be vacuous"
    # Measured 7.4e-2 .. 9.1e-2 (nnU-Net's float16 accumulator, not ours).
    assert max_diff <= 0.15
    # A flip needs the two probability vectors to cross: margin <= 2 * max|dp|.
    assert float(margin.max(initial=0.0)) <= 2 * max_diff
    assert disagree.sum() <= 0.01 * foreground


def test_spec_records_nnunet_contract(imported) -> None:
    _, folder = imported["regions"]
    spec = ModelSpec.model_validate_json((folder / "model_spec.json").read_text())
    assert spec.preprocessing == "nnunet" and spec.format_version == 2
    assert spec.output_kind == "sigmoid_regions"
    assert spec.regions == [[1, 2, 3], [1, 3], [3]] and spec.regions_class_order == [2, 1, 3]
    assert spec.modalities == list(MODALITIES)
    assert spec.patch_size == (32, 32, 32) and spec.mirror_axes == (0, 1, 2)
    assert spec.channel_normalisation is not None
    assert all(n.scheme == "ZScoreNormalization" for n in spec.channel_normalisation)
    assert spec.nnunet is not None and spec.nnunet.folds == ["0", "1"]
    assert (folder / "model_card.md").is_file() and (folder / "metrics.json").is_file()


def _copy(model: Path, tmp_path: Path) -> Path:
    target = tmp_path / model.name
    shutil.copytree(model, target)
    return target


def _versions(settings: Settings, name: str) -> int:
    from cerebrascan.registry import client_for

    return len(client_for(settings).search_model_versions(f"name='{name}'"))


def test_import_registers_one_version(label_model: Path, tmp_path: Path) -> None:
    settings = Settings()
    result = import_nnunet_folder(
        settings, label_model, name="nnunet-tiny-labels", out_dir=tmp_path / "m", alias="test"
    )
    assert result.version is not None
    assert _versions(settings, "nnunet-tiny-labels") == 1


@pytest.mark.parametrize("breakage", ["missing_fold", "plans_mismatch", "channel_count"])
def test_broken_folder_is_refused(label_model: Path, tmp_path: Path, breakage: str) -> None:
    broken = _copy(label_model, tmp_path)
    folds: list[str] | None = None
    message = ""
    if breakage == "missing_fold":
        folds = ["0", "1", "2"]
        message = "fold"
    elif breakage == "plans_mismatch":
        plans = json.loads((broken / "plans.json").read_text())
        plans["configurations"]["3d_fullres"]["patch_size"] = [48, 48, 48]
        (broken / "plans.json").write_text(json.dumps(plans))
        message = "plans.json does not match"
    else:
        dataset = json.loads((broken / "dataset.json").read_text())
        dataset["channel_names"] = {"0": "T1", "1": "T1ce", "2": "T2"}
        (broken / "dataset.json").write_text(json.dumps(dataset))
        message = "differ"
    settings = Settings()
    name = f"nnunet-broken-{breakage}"
    with pytest.raises(NnunetImportError, match=message):
        import_nnunet_folder(settings, broken, name=name, out_dir=tmp_path / "m", folds=folds)
    assert _versions(settings, name) == 0
    assert not (tmp_path / "m").exists()


def test_channel_count_mismatch_with_matching_checkpoint(label_model: Path, tmp_path: Path) -> None:
    """dataset.json and checkpoint agree on 3 channels but the weights take 4."""
    broken = _copy(label_model, tmp_path)
    dataset = json.loads((broken / "dataset.json").read_text())
    dataset["channel_names"] = {"0": "T1", "1": "T1ce", "2": "T2"}
    (broken / "dataset.json").write_text(json.dumps(dataset))
    for fold in ("0", "1"):
        path = broken / f"fold_{fold}" / "checkpoint_final.pth"
        checkpoint = torch.load(path, weights_only=False)
        checkpoint["init_args"]["dataset_json"] = copy.deepcopy(dataset)
        torch.save(checkpoint, path)
    with pytest.raises(NnunetImportError, match="channels"):
        build_nnunet_model_folder(broken, tmp_path / "m")


def _post_case(url: str, folder: Path, options: dict[str, Any]) -> dict[str, Any]:
    import httpx

    files = {
        m: (f"{m}.nii.gz", (folder / f"{m}.nii.gz").read_bytes(), "application/gzip")
        for m in MODALITIES
    }
    response = httpx.post(
        f"{url}/analyze", files=files, data={"options": json.dumps(options)}, timeout=600
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.slow
@pytest.mark.e2e
def test_cli_import_is_served_by_analyze(label_model: Path, test_cases, tmp_path: Path) -> None:
    """`cerebrascan import-nnunet` then a real `bentoml serve` of that registry version: the
    label map that /analyze returns is nnUNetPredictor's (fp32) on the same image; the torch
    engine, built from the same import, gives the same labels as ONNX Runtime."""
    import gzip

    import httpx
    import nibabel as nib
    from click.testing import CliRunner

    from cerebrascan.cli import main
    from cerebrascan.inputs.nifti import read_uploads
    from cerebrascan.pipeline import AnalysisPipeline
    from cerebrascan.registry import resolve_model
    from cerebrascan.testing.server_process import bentoml_server
    from schemas.analysis import AnalyzeOptions
    from tests.conftest import SESSION_DATA_DIR

    name = "nnunet-served"
    result = CliRunner().invoke(
        main, ["import-nnunet", str(label_model), "--name", name, "--out", str(tmp_path / "m")]
    )
    assert result.exit_code == 0, result.output
    image, spacing = test_cases["aniso_2p5x3x4"]
    case = tmp_path / "case"
    case.mkdir()
    for index, modality in enumerate(MODALITIES):
        _write_nifti(image[index], spacing, case / f"{modality}.nii.gz")
    reference, _ = _reference(label_model, image, spacing, False, fp32=True)
    env = {
        "CEREBRASCAN_DATA_DIR": str(SESSION_DATA_DIR),
        "CEREBRASCAN_MODEL_NAME": name,
        "CEREBRASCAN_RUNNER__MIN_COMPONENT_ML": "0",
    }
    with bentoml_server(env, tmp_path / "serve.log") as server:
        served = _post_case(server.url, case, {"mirror_tta": False})
        download = httpx.get(f"{server.url}{served['segmentation_url']}", timeout=60)
    assert served["model"]["name"] == name
    assert served["model"]["runner"].startswith("onnxruntime")
    assert served["model"]["precision"] == "fp32"
    labels = np.asarray(
        nib.Nifti1Image.from_bytes(gzip.decompress(download.content)).dataobj, np.uint8
    )
    assert labels.shape == reference.shape
    dices = {lab: _dice(labels == lab, reference == lab) for lab in (1, 2, 3)}
    assert any((reference == lab).any() for lab in (1, 2, 3)), "empty reference"
    assert min(dices.values()) >= DICE_MIN, dices

    settings = Settings(model_name=name, runner={"engine": "torch", "min_component_ml": 0})
    pipeline = AnalysisPipeline(settings, resolve_model(settings))
    files = {m: case / f"{m}.nii.gz" for m in MODALITIES}
    study = read_uploads(files, MODALITIES, max_voxels=settings.limits.max_voxels)
    answer = pipeline.run(study, AnalyzeOptions(mirror_tta=False)).response
    assert answer.model.runner == "torch" and answer.model.precision == "fp32"
    torch_labels = np.asarray(nib.load(pipeline.segmentation_path(answer.study_id)).dataobj)
    agreement = float((torch_labels == labels).mean())
    assert agreement >= 0.999, agreement
