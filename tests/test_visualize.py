"""What users see: the GLAM figure (glam_bundle/visualize.py), its TensorBoard handler, the loss terms in
TensorBoard, and scripts/tensorboard_figure.py.

The handlers run inside a real MONAI training (GLAMTrainer with ValidationHandler running a GLAMEvaluator) of a
tiny GLAM on 368×240 phantoms, and the event files are read back with TensorBoard's EventAccumulator.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import matplotlib.colors
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import DataLoader, MetaTensor
from ignite.engine import Engine
from matplotlib.patches import Rectangle
from monai.handlers import ValidationHandler
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from glam_bundle.constants import TINY_NETWORK
from glam_bundle.data.failures import collate_skip_failures
from glam_bundle.data.phantom import make_phantom
from glam_bundle.engines import GLAMEvaluator, GLAMTrainer
from glam_bundle.handlers import (
    DatasetLevelPxAP,
    GLAMTensorBoardImages,
    ImageLevelPxAP,
    LossTermsLogger,
    SoftDice,
)
from glam_bundle.handlers.evaluation_report import EvaluationReport
from glam_bundle.inferers import GLAMInferer
from glam_bundle.losses import GlobalModuleLoss, JointLoss, LocalModuleLoss
from glam_bundle.networks import GLAM
from glam_bundle import figure_style
from glam_bundle.visualize import (
    OUTSIDE_BREAST_NOTE,
    breast_fraction,
    downsample,
    glam_figure,
    patch_notes,
    save_glam_figure,
)
from tests.conftest import REPO_ROOT

torch.set_num_threads(1)

SCRIPT = REPO_ROOT / "scripts" / "tensorboard_figure.py"
HEIGHT, WIDTH = 368, 240
CROP = (64, 64)
TINY_GLAM = {
    "crop_size": CROP,
    **TINY_NETWORK,
    "num_patches_train": 2,
}


def _standardise(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    return (image - image.mean()) / image.std()


def _case(height=HEIGHT, width=WIDTH, seed=0):
    """A malignant phantom (standardised) with fake maps peaking on the lesion and the lesion's patch."""
    phantom = make_phantom(height, width, lesions=["malignant"], rng=seed)
    mask = np.stack([phantom.masks["benign"], phantom.masks["malignant"]]).astype(np.float32)
    rows, cols = np.nonzero(mask[1])
    centre = rows.mean(), cols.mean()
    yy, xx = np.mgrid[:height, :width]
    blob = np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * (height / 30) ** 2)).astype(np.float32)
    saliency = np.stack([0.1 * blob, 0.9 * blob])
    patch = np.clip([[int(centre[0]) - CROP[0] // 2, int(centre[1]) - CROP[1] // 2]], 0,
                    [height - CROP[0], width - CROP[1]])
    return {
        "image": _standardise(phantom.image),
        "saliency_global": F.avg_pool2d(torch.from_numpy(saliency)[None], 8)[0].numpy(),
        "saliency": saliency,
        "saliency_local": saliency,
        "patch_locations": patch,
        "crop_size": CROP,
        "mask": mask,
        "name": "phantom_0001.png",
        "labels": [0, 1],
        "predictions": {"y_global": [0.123, 0.876]},
    }


def _saliency_images(fig):
    return [image for ax in fig.axes for image in ax.images if (image.get_gid() or "").count(":")]


def _texts(fig):
    texts = [text.get_text() for ax in fig.axes for text in ax.texts]
    return texts + [fig.get_suptitle()]


# --- the figure ---------------------------------------------------------------------------------------------


def test_figure_has_colour_bars_legend_and_title():
    fig = glam_figure(**_case())
    overlays = _saliency_images(fig)
    assert sorted(image.get_gid() for image in overlays) == sorted(
        f"{key}:{cls}" for key in ("saliency_global", "saliency_local", "saliency") for cls in ("benign", "malignant"))
    for image in overlays:  # a colour bar with the fixed 0-1 scale on every saliency panel, naming its class
        bar = image.colorbar
        assert bar is not None and bar.ax in fig.axes
        assert (bar.vmin, bar.vmax) == (0.0, 1.0)
        assert list(bar.get_ticks()) == [0.0, 0.5, 1.0]
        key, cls = image.get_gid().split(":")
        label = bar.ax.get_ylabel()
        assert label.startswith(f"{cls} saliency S_") and "0 = none, 1 = highest" in label
        channel = ("benign", "malignant").index(cls)
        assert image.axes.get_title().endswith(cls)
        assert image.axes.title.get_color() == figure_style.CLASS_COLOURS[channel]  # the class colour everywhere
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert labels == ["benign lesion outline (ground truth)", "malignant lesion outline (ground truth)",
                      "selected patch (64×64 px)"]
    assert " ".join(fig.legends[0].get_title().get_text().split()).endswith(  # wrapped to the figure's width
        "S_g from the global module; S_l from the local module, inside the patches only; S_c combining S_g and "
        "S_l) boxes: the patches selected for the local module's closer look")
    handles = fig.legends[0].legend_handles
    assert [handle.get_color() for handle in handles[:2]] == list(figure_style.CLASS_COLOURS)
    title = fig.get_suptitle()
    assert "phantom_0001.png" in title
    assert "true labels (1 = lesion present): benign 0, malignant 1" in title
    assert "predicted probability ŷ_g (global module): benign 0.123, malignant 0.876" in title
    assert not any(OUTSIDE_BREAST_NOTE in text for text in _texts(fig) + labels)


def test_global_only_figure_and_unknown_labels():
    case = _case()
    del case["saliency"], case["saliency_local"], case["patch_locations"], case["mask"]
    case["labels"] = [-1, -1]
    case["predictions"] = [0.2, 0.7]
    fig = glam_figure(**case)
    assert sorted(image.get_gid() for image in _saliency_images(fig)) == ["saliency_global:benign",
                                                                           "saliency_global:malignant"]
    assert len(fig.legends) == 1  # no mask, no patch: the legend only says what the overlays show
    assert [text.get_text() for text in fig.legends[0].get_texts()] == [
        "saliency overlays: how strongly each pixel points to a lesion of the panel's class (0–1; "
        "S_g from the global module)"]
    assert fig.get_figwidth() > fig.get_figheight()  # one map: one row
    title = fig.get_suptitle()
    assert "labels (1 = lesion present): benign unknown, malignant unknown" in title
    assert "predicted probability ŷ: benign 0.200, malignant 0.700" in title


def test_outside_breast_note_for_a_patch_in_the_background_only():
    case = _case()
    image = case["image"]
    background_cols = np.nonzero(np.all(image == image.min(), axis=0))[0]
    assert len(background_cols) >= CROP[1]  # the phantom's breast leaves the right side black
    in_background = [[HEIGHT - CROP[0], WIDTH - CROP[1]]]
    assert breast_fraction(image, in_background, CROP)[0] == 0.0
    assert breast_fraction(image, case["patch_locations"], CROP)[0] > 0.9

    assert patch_notes(image, in_background, CROP) == ["outside the breast (0% breast tissue)"]
    assert patch_notes(image, case["patch_locations"], CROP) == [""]

    fig = glam_figure(**dict(case, patch_locations=in_background))
    assert [text for text in _texts(fig) if OUTSIDE_BREAST_NOTE in text] == ["patch outside the breast"]
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend[-1] == "selected patch (64×64 px): outside the breast (0% breast tissue)"
    assert fig.legends[0].legend_handles[-1].get_edgecolor() == matplotlib.colors.to_rgba(figure_style.FLAG_COLOUR)

    both = np.concatenate([case["patch_locations"], in_background])
    fig = glam_figure(**dict(case, patch_locations=both))
    assert [text for text in _texts(fig) if OUTSIDE_BREAST_NOTE in text] == ["patch 2: outside the breast"]
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend[2:] == ["selected patch 1 (64×64 px)",  # patches are numbered when K > 1
                          "selected patch 2 (64×64 px): outside the breast (0% breast tissue)"]
    boxes = [patch for ax in fig.axes for patch in ax.patches if isinstance(patch, Rectangle)]
    flagged = [box for box in boxes if box.get_linestyle() == "--"]
    assert len(boxes) == 2 * len(flagged) == 2 * 7  # each patch on the input and the 6 map panels
    assert all(box.get_xy() == (WIDTH - CROP[1], HEIGHT - CROP[0]) for box in flagged)


def test_breast_fraction_on_a_subsampled_image():
    image = _case()["image"]
    location = [[HEIGHT - CROP[0], 0]]
    full = breast_fraction(image, location, CROP)
    half = breast_fraction(downsample(image, 2), location, CROP, image_size=(HEIGHT, WIDTH))
    assert abs(full[0] - half[0]) < 0.05


def test_downsample_max_keeps_small_lesions():
    mask = np.zeros((2, 16, 12), np.float32)
    mask[1, 5, 7] = 1
    assert downsample(mask, 4, "max").shape == (2, 4, 3)
    assert downsample(mask, 4, "max")[1].sum() == 1 and downsample(mask, 4)[1].sum() == 0


def test_save_glam_figure_writes_a_png_atomically_with_the_old_arguments(tmp_path):
    case = _case()
    path = tmp_path / "out" / "case_figure.png"
    # 0.1.0 call: path, image, S_c, patches, crop size, mask, title, predictions, step
    save_glam_figure(path, case["image"], case["saliency"], case["patch_locations"], CROP, case["mask"],
                     "case.png", [0.1, 0.9], 2)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.width > 500
    assert sorted(p.name for p in path.parent.iterdir()) == ["case_figure.png"]  # no temporary file left


def test_figure_of_a_full_size_case_is_drawn_subsampled():
    image = np.zeros((2944, 1920), np.float32)
    image[:, :900] = 1.0
    saliency = np.zeros((2, 2944, 1920), np.float32)
    fig = glam_figure(image, saliency=saliency, saliency_global=saliency[:, ::16, ::16], patch_locations=[[0, 0]])
    shapes = {image.get_array().shape for ax in fig.axes for image in ax.images}
    assert max(shape[0] for shape in shapes) <= 736


# --- evaluation PR curves ----------------------------------------------------------------------------------


def _report(tmp_path, min_positive_images=1):
    """An EvaluationReport over S_g and S_c of 4 images, malignant lesions in 2 of them, no benign lesion."""
    rng = np.random.default_rng(0)
    maps = {}
    for label in ("S_g", "S_c"):
        maps[label] = {name: cls(output_transform=lambda o: (o["saliency"], o["mask"]))
                       for name, cls in (("dice", SoftDice), ("image_pxap", ImageLevelPxAP),
                                         ("dataset_pxap", DatasetLevelPxAP))}
    batches = []
    for first in (0, 1):
        mask = torch.zeros(2, 2, 32, 24)
        mask[0, 1, 8 + first: 16, 4:12] = 1  # one malignant lesion per batch
        saliency = torch.as_tensor(rng.uniform(size=(2, 2, 32, 24)), dtype=torch.float32)
        batches.append({"saliency": saliency, "mask": mask, "label": torch.tensor([[0.0, 1.0], [0.0, 0.0]])})
    engine = Engine(lambda engine, batch: batch)
    engine.state.failures = []
    for label, handlers in maps.items():
        for name, handler in handlers.items():
            handler.attach(engine, f"{label}_{name}")
    report = EvaluationReport(tmp_path, maps, min_positive_images=min_positive_images)
    report.attach(engine)
    engine.run(batches)
    return report


def test_pr_curves_say_when_there_are_too_few_positives(tmp_path):
    report = _report(tmp_path)
    assert report.positives("benign")[:2] == (0, 0) and report.positives("malignant")[0] == 2
    benign = report.curve_figure("benign")
    axis = benign.axes[0]
    assert not axis.lines  # no curve, no chance line
    notes = [text.get_text() for text in axis.texts if text.get_gid() == "too-few-positives"]
    assert notes == ["too few positives to draw a precision-recall curve:\n0 images with a benign lesion mask "
                     "(at least 1 needed)"]
    assert axis.get_title() == "4 images, 0 with a benign lesion mask, 0 lesion pixels"

    malignant = report.curve_figure("malignant").axes[0]
    curves = {line.get_label().split(" ")[0]: line for line in malignant.lines}
    assert set(curves) == {"S_g", "S_c", "chance"}
    assert curves["S_g"].get_color() == figure_style.MAP_COLOURS["S_g"]  # the shared style
    assert curves["S_c"].get_color() == figure_style.MAP_COLOURS["S_c"]
    assert malignant.get_title() == ("4 images, 2 with a malignant lesion mask, 120 lesion pixels\n"
                                     "few lesions (fewer than 5 images): the curves are noisy")

    strict = _report(tmp_path / "strict", min_positive_images=3).curve_figure("malignant").axes[0]
    assert not strict.lines
    assert "2 images with a malignant lesion mask (at least 3 needed)" in strict.texts[0].get_text()
    assert sorted(p.name for p in tmp_path.glob("pr_curve_*.png")) == ["pr_curve_benign.png",
                                                                        "pr_curve_malignant.png"]


# --- loss terms ---------------------------------------------------------------------------------------------


def _global_output(n=2, requires_grad=True):
    generator = torch.Generator().manual_seed(0)
    out = {"y_scales": torch.rand(n, 3, 2, generator=generator)}
    for k, size in enumerate([(8, 6), (4, 3), (2, 2)]):
        out[f"saliency_native_{k}"] = torch.rand(n, 2, *size, generator=generator)
    out["y_local"] = torch.rand(n, 2, generator=generator)
    out["y_fusion"] = torch.rand(n, 2, generator=generator)
    out["saliency_patches"] = torch.rand(n, 3, 2, 4, 4, generator=generator)
    if requires_grad:
        for value in out.values():
            value.requires_grad_(True)
    return out


def test_losses_keep_their_terms_without_changing_the_value():
    target = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    pred = _global_output()
    loss = GlobalModuleLoss(sparsity_weight=0.01)
    assert loss.terms == {}
    value = loss(pred, target)
    terms = loss.terms
    assert set(terms) == {"bce_s0", "bce_s1", "bce_s2", "l1", "sparsity", "total"}
    assert all(isinstance(v, float) for v in terms.values())
    assert terms["total"] == pytest.approx(value.item())
    assert terms["bce_s0"] + terms["bce_s1"] + terms["bce_s2"] + terms["sparsity"] == pytest.approx(value.item())
    assert terms["sparsity"] == pytest.approx(0.01 * terms["l1"])
    value.backward()  # the stored terms are detached: the graph is the loss's own
    assert loss.terms is terms  # same call, same dict
    loss(pred, target)
    assert loss.terms is not terms  # a new call, a new dict

    local = LocalModuleLoss(sparsity_weight=0.01)
    value = local(pred, target)
    assert set(local.terms) == {"bce", "l1", "sparsity", "total"}
    assert local.terms["bce"] + local.terms["sparsity"] == pytest.approx(value.item())

    joint = JointLoss(sparsity_weight=0.01)
    value = joint(pred, target)
    terms = joint.terms
    assert {"global", "local", "fusion", "total", "global_bce_s0", "global_sparsity", "local_bce"} <= set(terms)
    assert "global_total" not in terms
    assert terms["global"] + terms["local"] + terms["fusion"] == pytest.approx(value.item())
    assert terms["total"] == pytest.approx(value.item())


# --- handlers in a real MONAI run ---------------------------------------------------------------------------


def _item(seed: int, lesion: str | None):
    phantom = make_phantom(HEIGHT, WIDTH, lesions=[lesion] if lesion else [], rng=seed)
    mask = torch.from_numpy(np.stack([phantom.masks["benign"], phantom.masks["malignant"]]).astype(np.float32))
    return {
        "image": MetaTensor(torch.from_numpy(_standardise(phantom.image))[None],
                            meta={"filename_or_obj": f"/data/case_{seed}.png"}),
        "label": torch.tensor([float(phantom.labels["benign"]), float(phantom.labels["malignant"])]),
        "mask": mask,
        "has_mask": torch.tensor([True, True]),
    }


def _failure(seed: int):
    return {"failed": True, "image": f"/data/bad_{seed}.png", "error": "unreadable"}


def _events(log_dir: Path) -> EventAccumulator:
    files = sorted(log_dir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {log_dir}"
    scalars, images = {}, {}
    for path in files:
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["images"]:
            images.setdefault(tag, []).extend(event.step for event in accumulator.Images(tag))
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(event.step for event in accumulator.Scalars(tag))
    return scalars, images


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    """Two epochs of global-module training (2 iterations each, one of them a batch of failed cases) with a
    validation after each epoch whose evaluator runs the full GLAM; batch size 2 in both."""
    torch.manual_seed(0)
    log_dir = tmp_path_factory.mktemp("tensorboard")
    train_items = [_item(1, "malignant"), _item(2, "benign"), _failure(3), _failure(4)]
    val_items = [_failure(5), _failure(6), _item(7, "malignant"), _item(8, None), _item(9, "benign")]
    network = GLAM(**TINY_GLAM)
    loss = GlobalModuleLoss()
    images = GLAMTensorBoardImages(log_dir=log_dir, max_images=2, crop_size=CROP)
    evaluator = GLAMEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(val_items, batch_size=2, collate_fn=collate_skip_failures),
        network=network,
        inferer=GLAMInferer(global_only=False),
        val_handlers=[images],
        output_batch_keys=["mask"],
        decollate=False,
    )
    terms_logger = LossTermsLogger(loss, log_dir=log_dir)
    trainer = GLAMTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=DataLoader(train_items, batch_size=2, collate_fn=collate_skip_failures),
        network=network,
        optimizer=torch.optim.Adam(network.global_module.parameters(), 1e-4),
        loss_function=loss,
        inferer=GLAMInferer(global_only=True),
        train_handlers=[ValidationHandler(interval=1, validator=evaluator, epoch_level=True), terms_logger],
        decollate=False,
    )
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("glam_bundle.handlers.loss_terms").addHandler(handler)
    logging.getLogger("glam_bundle.handlers.loss_terms").setLevel(logging.INFO)
    try:
        trainer.run()
    finally:
        logging.getLogger("glam_bundle.handlers.loss_terms").removeHandler(handler)
    images.close()
    terms_logger.close()
    return {"log_dir": log_dir, "records": records, "trainer": trainer, "evaluator": evaluator}


def test_tensorboard_images_for_two_cases_over_two_epochs(training_run):
    scalars, images = _events(training_run["log_dir"])
    # the first two good cases (the first validation batch failed entirely), global step = the trainer's epoch
    assert images == {"validation/case_7": [1, 2], "validation/case_8": [1, 2]}
    for path in sorted(training_run["log_dir"].glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(path), size_guidance={"images": 0})
        accumulator.Reload()
        if "validation/case_7" in accumulator.Tags()["images"]:
            event = accumulator.Images("validation/case_7")[-1]
            assert event.width > 600 and event.height > 300  # a rendered figure, not a raw image


def test_loss_terms_logger_writes_scalars_and_logs_epoch_means(training_run):
    scalars, _ = _events(training_run["log_dir"])
    expected = {f"train_loss_terms/{name}" for name in ("bce_s0", "bce_s1", "bce_s2", "l1", "sparsity", "total")}
    assert set(scalars) == expected
    # iterations 1 and 3 ran the loss; 2 and 4 were batches of failed cases
    assert all(sorted(steps) == [1, 3] for steps in scalars.values())
    messages = [record.getMessage() for record in training_run["records"]]
    assert len(messages) == 2 and messages[0].startswith("Epoch[1] loss terms (mean of 1 iterations): bce_s0 ")


def test_tensorboard_images_of_a_global_only_stand_alone_evaluation(tmp_path):
    torch.manual_seed(0)
    items = [_item(7, "malignant"), _item(8, None), _item(9, "benign")]
    handler = GLAMTensorBoardImages(log_dir=tmp_path, max_images=5, crop_size=CROP, tag="test")
    evaluator = GLAMEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(items, batch_size=3, collate_fn=collate_skip_failures),
        network=GLAM(**TINY_GLAM),
        inferer=GLAMInferer(global_only=True),
        val_handlers=[handler],
        decollate=False,
    )
    evaluator.run()
    handler.close()
    _, images = _events(tmp_path)
    assert images == {"test/case_7": [1], "test/case_8": [1], "test/case_9": [1]}


def test_script_draws_the_run(training_run, tmp_path):
    out = tmp_path / "tensorboard.png"
    result = subprocess.run([sys.executable, str(SCRIPT), str(training_run["log_dir"]), str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width >= 1000 and png.height > 600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tensorboard.png"]


def test_script_reports_a_folder_without_event_files(tmp_path):
    out = tmp_path / "out.png"
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), str(out)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "no TensorBoard event files" in result.stderr
    assert not out.exists()
