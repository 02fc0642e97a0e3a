"""Localisation / classification metrics and their Ignite handlers, checked against independent computations
(sklearn, scipy, direct numpy formulas) on synthetic maps and masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.handlers import MetricsSaver, from_engine
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from glam_bundle.constants import CLASS_NAMES
from glam_bundle.handlers import DatasetLevelPxAP, ImageLevelPxAP, PerClassROCAUC, SoftDice
from glam_bundle.metrics import (
    DatasetLevelPxAPMetric,
    ImageLevelPxAPMetric,
    PerClassROCAUCMetric,
    ScoreBinning,
    SoftDiceMetric,
    average_precision_from_histograms,
    compute_pixel_histograms,
    precision_recall_curve_points,
    resize_to_mask,
)




def random_masks(rng: np.random.Generator, batch: int, height: int, width: int) -> np.ndarray:
    """(B, 2, H, W) float32 masks, each a random rectangle plus a few scattered pixels."""
    masks = np.zeros((batch, 2, height, width), np.float32)
    for b in range(batch):
        for c in range(2):
            top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
            masks[b, c, top : top + rng.integers(2, height // 3), left : left + rng.integers(2, width // 3)] = 1
            masks[b, c][rng.random((height, width)) < 0.01] = 1
    return masks


def random_maps(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Saliency maps in [0, 1] (float32): uniform, with many ties, or peaked near zero like sigmoid CAMs."""
    if kind == "uniform":
        return rng.random(shape, dtype=np.float32)
    if kind == "ties":
        return (np.round(rng.random(shape) * 20) / 20).astype(np.float32)
    if kind == "near_zero":  # sigmoid of logits around -12: median score 6e-6
        return (1 / (1 + np.exp(-rng.normal(-12, 2, shape)))).astype(np.float32)
    raise ValueError(kind)


def sklearn_ap(mask: np.ndarray, scores: np.ndarray) -> float:
    return float(average_precision_score(mask.ravel().astype(int), scores.ravel().astype(np.float64)))


# ----------------------------------------------------------------------------------------------- resizing


def test_resize_nearest_is_block_replication_and_bilinear_matches_scipy():
    rng = np.random.default_rng(0)
    small = rng.random((1, 2, 23, 15), dtype=np.float32)
    nearest = resize_to_mask(torch.from_numpy(small), (368, 240), "nearest").numpy()
    np.testing.assert_array_equal(nearest, np.kron(small, np.ones((1, 1, 16, 16), np.float32)))
    bilinear = resize_to_mask(torch.from_numpy(small), (368, 240), "bilinear").numpy()
    # scipy's half-pixel (grid_mode) linear zoom with edge clamping is torch's align_corners=False bilinear.
    reference = np.stack(
        [ndi.zoom(m.astype(np.float64), 16, order=1, grid_mode=True, mode="nearest") for m in small[0]]
    )
    np.testing.assert_allclose(bilinear[0], reference, atol=1e-6)
    with pytest.raises(ValueError, match="interpolation"):
        resize_to_mask(torch.from_numpy(small), (368, 240), "bicubic")


# ------------------------------------------------------------------------------------------------- Dice


def numpy_soft_dice(saliency: np.ndarray, mask: np.ndarray) -> float:
    s, g = saliency.astype(np.float64), mask.astype(np.float64)
    return float(2 * (s * g).sum() / ((s**2).sum() + (g**2).sum()))


def test_soft_dice_matches_numpy_formula_with_edge_cases():
    rng = np.random.default_rng(1)
    maps = random_maps(rng, (4, 2, 96, 64), "uniform")
    masks = random_masks(rng, 4, 96, 64)
    maps[1, 0] = 0  # empty prediction -> Dice 0
    maps[2, 1] = 1  # all-ones map -> 2|G| / (H·W + |G|)
    masks[3, 0] = 0  # empty mask -> image not counted for benign
    metric = SoftDiceMetric()
    per_image = metric(torch.from_numpy(maps), torch.from_numpy(masks)).numpy()

    expected = np.array([[numpy_soft_dice(maps[b, c], masks[b, c]) for c in range(2)] for b in range(4)])
    expected[3, 0] = np.nan
    np.testing.assert_allclose(per_image, expected, rtol=1e-6, equal_nan=True)
    assert per_image[1, 0] == 0.0
    foreground = float(masks[2, 1].sum())
    assert per_image[2, 1] == pytest.approx(2 * foreground / (96 * 64 + foreground), rel=1e-9)

    summary = metric.aggregate()
    assert set(summary) == {f"{c}_{k}" for c in CLASS_NAMES for k in ("mean", "std", "count")}
    assert all(type(v) is float for v in summary.values())
    assert summary["benign_count"] == 3.0 and summary["malignant_count"] == 4.0
    assert summary["benign_mean"] == pytest.approx(np.mean(expected[:3, 0]), rel=1e-6)
    assert summary["benign_std"] == pytest.approx(np.std(expected[:3, 0]), rel=1e-6)
    assert summary["malignant_mean"] == pytest.approx(np.mean(expected[:, 1]), rel=1e-6)


def test_soft_dice_compares_at_mask_resolution():
    rng = np.random.default_rng(2)
    small = random_maps(rng, (2, 2, 23, 15), "uniform")
    masks = random_masks(rng, 2, 368, 240)
    per_image = SoftDiceMetric(interpolation="nearest")(torch.from_numpy(small), torch.from_numpy(masks)).numpy()
    upsampled = np.kron(small, np.ones((1, 1, 16, 16), np.float32))
    expected = [[numpy_soft_dice(upsampled[b, c], masks[b, c]) for c in range(2)] for b in range(2)]
    np.testing.assert_allclose(per_image, expected, rtol=1e-6)


def test_metrics_with_no_counted_image_report_nan():
    maps = torch.rand(2, 2, 16, 16)
    masks = torch.zeros(2, 2, 16, 16)
    for metric in (SoftDiceMetric(), ImageLevelPxAPMetric()):
        metric(maps, masks)
        summary = metric.aggregate()
        assert summary["benign_count"] == 0.0 and math.isnan(summary["benign_mean"])
    never_called = SoftDiceMetric().aggregate()
    assert never_called["malignant_count"] == 0.0 and math.isnan(never_called["malignant_std"])
    dataset_level = DatasetLevelPxAPMetric()
    dataset_level(maps, masks)
    assert all(math.isnan(v) for v in dataset_level.aggregate().values())


# ------------------------------------------------------------------------------------- image-level PxAP


@pytest.mark.parametrize("kind", ["uniform", "ties", "near_zero"])
def test_image_pxap_equals_sklearn(kind):
    rng = np.random.default_rng(3)
    maps = random_maps(rng, (3, 2, 80, 48), kind)
    masks = random_masks(rng, 3, 80, 48)
    masks[0, 1] = 0  # not counted for malignant
    metric = ImageLevelPxAPMetric()
    per_image = metric(torch.from_numpy(maps), torch.from_numpy(masks)).numpy()
    expected = np.array(
        [[sklearn_ap(masks[b, c], maps[b, c]) if masks[b, c].any() else np.nan for c in range(2)] for b in range(3)]
    )
    np.testing.assert_allclose(per_image, expected, rtol=1e-12, atol=1e-12, equal_nan=True)
    summary = metric.aggregate()
    assert summary["malignant_count"] == 2.0
    assert summary["malignant_mean"] == pytest.approx(np.mean(expected[1:, 1]), abs=1e-12)
    assert summary["malignant_std"] == pytest.approx(np.std(expected[1:, 1]), abs=1e-12)


def test_image_pxap_of_block_maps_upsampled_to_the_mask():
    """A 23x15 map nearest-upsampled to 368x240: 256-pixel tie groups, handled like sklearn."""
    rng = np.random.default_rng(4)
    small = random_maps(rng, (2, 2, 23, 15), "uniform")
    masks = random_masks(rng, 2, 368, 240)
    per_image = ImageLevelPxAPMetric()(torch.from_numpy(small), torch.from_numpy(masks)).numpy()
    upsampled = np.kron(small, np.ones((1, 1, 16, 16), np.float32))
    expected = [[sklearn_ap(masks[b, c], upsampled[b, c]) for c in range(2)] for b in range(2)]
    np.testing.assert_allclose(per_image, expected, rtol=1e-12, atol=1e-12)


def test_image_pxap_accepts_lists_of_channel_first_images():
    rng = np.random.default_rng(5)
    maps, masks = random_maps(rng, (2, 2, 32, 24), "uniform"), random_masks(rng, 2, 32, 24)
    batched, listed = ImageLevelPxAPMetric(), ImageLevelPxAPMetric()
    batched(torch.from_numpy(maps), torch.from_numpy(masks))
    listed(list(torch.from_numpy(maps)), list(torch.from_numpy(masks)))
    assert batched.aggregate() == listed.aggregate()


# ----------------------------------------------------------------------------------- dataset-level PxAP


@pytest.mark.parametrize(
    "binning", [ScoreBinning(), ScoreBinning(num_bins=1000), ScoreBinning(precision_bits=4, min_exponent=-8)]
)
def test_score_bins_contain_their_scores(binning):
    rng = np.random.default_rng(6)
    special = np.array(
        [0, 1, 2.0**-40, 2.0**-41, 2.0**-8, 1e-45, 0.5, np.nextafter(np.float32(0.5), 0), 0.999], np.float32
    )
    tiny = rng.random(20_000).astype(np.float32) ** 20  # down to the subnormals
    scores = np.concatenate([rng.random(20_000, dtype=np.float32), tiny, special])
    index = binning.index(torch.from_numpy(scores)).numpy()
    edges = binning.lower_edges()
    upper = np.append(edges[1:], np.inf)
    assert edges[0] == 0 and np.all(np.diff(edges) > 0) and edges.shape == (binning.size,)
    assert np.all(edges[index] <= scores) and np.all(scores < upper[index])


@pytest.mark.parametrize("binning", [ScoreBinning(), ScoreBinning(num_bins=1000)])
def test_dataset_pxap_is_sklearn_on_scores_rounded_to_bin_edges(binning):
    """From the histograms, AP and the curve points equal sklearn's on scores replaced by their bin's lower edge."""
    rng = np.random.default_rng(7)
    maps = random_maps(rng, (3, 2, 64, 40), "uniform")
    masks = random_masks(rng, 3, 64, 40)
    masks[2, 0] = 0
    histograms = compute_pixel_histograms(torch.from_numpy(maps), torch.from_numpy(masks) > 0.5, binning)
    rounded = binning.lower_edges()[binning.index(torch.from_numpy(maps)).numpy()]
    for c, counted in ((0, [0, 1]), (1, [0, 1, 2])):
        y, scores = masks[counted, c].ravel(), rounded[counted, c].ravel()
        assert average_precision_from_histograms(histograms[c, 0], histograms[c, 1]) == pytest.approx(
            sklearn_ap(y, scores), abs=1e-12
        )
        precision, recall, thresholds = precision_recall_curve_points(
            histograms[c, 0], histograms[c, 1], binning.lower_edges()
        )
        ref_precision, ref_recall, ref_thresholds = precision_recall_curve(y, scores)
        np.testing.assert_allclose(precision, ref_precision, atol=1e-12)
        np.testing.assert_allclose(recall, ref_recall, atol=1e-12)
        np.testing.assert_array_equal(thresholds, ref_thresholds)


@pytest.mark.parametrize("kind", ["uniform", "ties", "near_zero"])
def test_dataset_pxap_with_default_bins_within_1e3_of_sklearn(kind):
    rng = np.random.default_rng(8)
    metric = DatasetLevelPxAPMetric()
    all_maps, all_masks = [], []
    for _ in range(3):  # three batches, one running histogram
        maps, masks = random_maps(rng, (2, 2, 184, 120), kind), random_masks(rng, 2, 184, 120)
        masks[0, 1] = 0  # this image adds no pixel to the malignant curve
        metric(torch.from_numpy(maps), torch.from_numpy(masks))
        all_maps.append(maps)
        all_masks.append(masks)
    maps, masks = np.concatenate(all_maps), np.concatenate(all_masks)
    result = metric.aggregate()
    for c, name in enumerate(CLASS_NAMES):
        counted = masks[:, c].reshape(len(masks), -1).any(axis=1)
        expected = sklearn_ap(masks[counted, c], maps[counted, c])
        assert abs(result[name] - expected) < 1e-3, (name, result[name], expected)
    curves = metric.curve_points()
    assert set(curves) == set(CLASS_NAMES)


def test_dataset_pxap_memory_is_flat_from_10_to_1000_maps():
    """The metric keeps one running histogram: its buffers hold the same bytes after 10 and 1,000 maps."""

    def buffer_bytes(metric):
        tensors = [t for buffer in metric._buffers for t in buffer]
        return len(tensors), sum(t.numel() * t.element_size() for t in tensors)

    rng = np.random.default_rng(9)
    maps = torch.from_numpy(random_maps(rng, (10, 2, 736, 480), "uniform"))
    masks = torch.from_numpy(random_masks(rng, 10, 736, 480))
    metric = DatasetLevelPxAPMetric()
    metric(maps, masks)
    after_10, result_10 = buffer_bytes(metric), metric.aggregate()
    for _ in range(99):
        metric(maps, masks)
    after_1000 = buffer_bytes(metric)
    assert after_10 == after_1000 == (1, 2 * 2 * metric.binning.size * 8)
    assert int(metric.histograms().sum()) == 1000 * 2 * 736 * 480
    # The same 10 maps a hundred times over give the same curve.
    assert metric.aggregate() == pytest.approx(result_10, abs=1e-12)


def test_dataset_pxap_checks_inputs():
    metric = DatasetLevelPxAPMetric()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metric(torch.full((1, 2, 8, 8), 1.5), torch.ones(1, 2, 8, 8))
    with pytest.raises(ValueError, match="differ"):
        metric(torch.rand(1, 2, 8, 8), torch.ones(2, 2, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        metric(torch.full((1, 2, 8, 8), float("nan")), torch.ones(1, 2, 8, 8))
    with pytest.raises(ValueError, match="num_bins"):
        DatasetLevelPxAPMetric(num_bins=0)


# ------------------------------------------------------------------------------------------- ROC AUC


def test_roc_auc_per_class_matches_sklearn_and_skips_unknown_labels():
    rng = np.random.default_rng(10)
    scores = rng.random((40, 2), dtype=np.float32)
    labels = (rng.random((40, 2)) < 0.4).astype(np.float32)
    labels[:5, 1] = -1  # unknown malignant label
    metric = PerClassROCAUCMetric()
    metric(torch.from_numpy(scores[:25]), torch.from_numpy(labels[:25]))
    metric(list(torch.from_numpy(scores[25:])), list(torch.from_numpy(labels[25:])))
    result = metric.aggregate()
    assert result["benign"] == pytest.approx(roc_auc_score(labels[:, 0], scores[:, 0]), abs=1e-12)
    assert result["malignant"] == pytest.approx(roc_auc_score(labels[5:, 1], scores[5:, 1]), abs=1e-12)


# ------------------------------------------------------------------------------------------- handlers


def test_handlers_as_key_and_additional_metrics_of_a_monai_evaluator(tmp_path):
    rng = np.random.default_rng(11)
    maps = random_maps(rng, (6, 2, 23, 15), "uniform")
    masks = random_masks(rng, 6, 368, 240)
    masks[0, 0] = 0
    data = [{"image": torch.from_numpy(m), "label": torch.from_numpy(g)} for m, g in zip(maps, masks)]
    # The identity network passes the saliency maps through as "pred".
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(data), batch_size=4),
        network=torch.nn.Identity(),
        key_val_metric={"val_dice": SoftDice(output_transform=from_engine(["pred", "label"]))},
        additional_metrics={
            "val_image_pxap": ImageLevelPxAP(output_transform=from_engine(["pred", "label"])),
            "val_dataset_pxap": DatasetLevelPxAP(output_transform=from_engine(["pred", "label"])),
        },
        val_handlers=[MetricsSaver(save_dir=str(tmp_path), metrics="*", metric_details="*")],
    )
    evaluator.run()
    metrics = evaluator.state.metrics

    dice = SoftDiceMetric()
    dice(torch.from_numpy(maps), torch.from_numpy(masks))
    dice_summary = dice.aggregate()
    assert metrics["val_dice"] == pytest.approx((dice_summary["benign_mean"] + dice_summary["malignant_mean"]) / 2)
    assert evaluator.state.best_metric == metrics["val_dice"]
    for key, value in dice_summary.items():
        assert metrics[f"val_dice_{key}"] == pytest.approx(value)
    assert metrics["val_dice_benign_count"] == 5.0
    details = evaluator.state.metric_details["val_dice"]
    assert details.shape == (6, 2) and torch.isnan(details[0, 0])

    image_pxap = ImageLevelPxAPMetric()
    image_pxap(torch.from_numpy(maps), torch.from_numpy(masks))
    assert metrics["val_image_pxap_malignant_mean"] == pytest.approx(image_pxap.aggregate()["malignant_mean"])

    dataset_pxap = DatasetLevelPxAPMetric()
    dataset_pxap(torch.from_numpy(maps), torch.from_numpy(masks))
    expected = dataset_pxap.aggregate()
    assert metrics["val_dataset_pxap"] == pytest.approx((expected["benign"] + expected["malignant"]) / 2)
    assert "val_dataset_pxap" not in evaluator.state.metric_details  # a histogram is not per-image detail

    saved = (tmp_path / "metrics.csv").read_text()
    assert "val_dice_benign_mean" in saved and "val_dataset_pxap_malignant" in saved
    assert (tmp_path / "val_dice_raw.csv").exists()


def test_roc_auc_handler_in_a_monai_evaluator():
    rng = np.random.default_rng(12)
    scores = rng.random((12, 2), dtype=np.float32)
    labels = np.tile(np.array([[0, 1], [1, 0], [1, -1]], np.float32), (4, 1))
    data = [{"image": torch.from_numpy(s), "label": torch.from_numpy(y)} for s, y in zip(scores, labels)]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(data), batch_size=5),
        network=torch.nn.Identity(),
        key_val_metric={"val_auc": PerClassROCAUC(output_transform=from_engine(["pred", "label"]))},
    )
    evaluator.run()
    benign = roc_auc_score(labels[:, 0], scores[:, 0])
    known = labels[:, 1] >= 0
    malignant = roc_auc_score(labels[known, 1], scores[known, 1])
    assert evaluator.state.metrics["val_auc_benign"] == pytest.approx(benign)
    assert evaluator.state.metrics["val_auc_malignant"] == pytest.approx(malignant)
    assert evaluator.state.metrics["val_auc"] == pytest.approx((benign + malignant) / 2)


# ----------------------------------------------------------------------------------------------- GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_on_gpu_match_cpu():
    rng = np.random.default_rng(13)
    maps = torch.from_numpy(random_maps(rng, (2, 2, 46, 30), "uniform"))
    masks = torch.from_numpy(random_masks(rng, 2, 184, 120))
    for metric_type in (SoftDiceMetric, ImageLevelPxAPMetric, DatasetLevelPxAPMetric):
        on_cpu, on_gpu = metric_type(), metric_type()
        on_cpu(maps, masks)
        on_gpu(maps.cuda(), masks.cuda())
        assert on_gpu.aggregate() == pytest.approx(on_cpu.aggregate(), abs=1e-9)
