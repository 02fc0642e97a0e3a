"""What MONAI Label relies on, checked without monailabel installed (its install replaces torch and numpy; the
end-to-end run is ``scripts/monailabel_smoke.sh``).

MONAI Label's ``BundleInferTask`` (monailabel 0.8.5, ``tasks/infer/bundle.py``) parses ``configs/inference.json``
with ``bundle_root`` set to the bundle folder from its own working directory, takes ``preprocessing`` (or
``pre_transforms``) and ``postprocessing`` or ``post_transforms`` as lists (of keys present, the later in that order
wins: ``post_transforms`` is the label map, ``postprocessing`` stays the bundle evaluator's), sets ``image_only = False`` on every ``LoadImaged`` and wraps it, runs the network on
``image[None]``, keeps item 0 of the (decollated) output as ``pred``, appends
``Restored(keys="pred", ref_image="image")`` (resizes ``pred`` when ``pred.shape[1:]`` differs from the end of
the image's ``meta["spatial_shape"]``) and writes 2D results with ITK after a full transpose (``write_itk``).
These tests replay that sequence with plain MONAI.
"""

from __future__ import annotations

import json
import os
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, LoadImaged
from PIL import Image

from glam_bundle.data.failures import failure_message
from glam_bundle.data.phantom import make_phantom
from glam_bundle.transforms import finish_transforms, frame_transforms, load_transforms, window_transforms
from tests.conftest import REPO_ROOT, SMALL_NETWORK_OVERRIDES

SIZE = {"image_size": [368, 240], "crop_size": [64, 64], "geometry_scale": 0.125}
# the tests' narrow network (tests/conftest.py), at this file's own frame
NARROW = {key: value for key, value in SMALL_NETWORK_OVERRIDES.items() if key.startswith("network_def#")}
RAW = (736, 480)  # the raw phantom is twice the model frame: crop, window and (with spacing) resampling all act


def parse(config: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs" / config))
    parser.read_meta(str(REPO_ROOT / "configs" / "metadata.json"))
    parser["bundle_root"] = str(REPO_ROOT)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def planted_lesion(folder, laterality: str, view: str, seed: int):
    """A raw phantom with one benign lesion: (image path, (H, W) bool lesion mask, mask path)."""
    phantom = make_phantom(*RAW, view=view, laterality=laterality, lesions=["benign"], rng=seed, lesion_scale=2.0)
    image_path = folder / f"phantom_{laterality}-{view}.png"
    mask_path = folder / f"phantom_{laterality}-{view}_benign.png"
    Image.fromarray(phantom.image).save(image_path)
    Image.fromarray(phantom.masks["benign"] * 255).save(mask_path)
    return image_path, phantom.masks["benign"].astype(bool), mask_path


def model_frame_mask(image_path, mask_path, spacing) -> torch.Tensor:
    """The lesion mask carried into the model frame by the training chain: (2, 368, 240) float32."""
    chain = Compose(
        load_transforms(min_size=64, model_frame_size=SIZE["image_size"])
        + frame_transforms(spacing=spacing, geometry_scale=SIZE["geometry_scale"])
        + window_transforms(SIZE["image_size"])
        + finish_transforms()
    )
    return chain({"image": str(image_path), "mask_benign": str(mask_path)})["mask"]


def run_as_monailabel(parser: ConfigParser, image_path, pred_fn) -> tuple[dict, torch.Tensor]:
    """Pre-processing, ``pred_fn(data)`` as the network step, post-processing and ``Restored``'s size rule, as
    ``BundleInferTask`` runs them; returns the data and the array ITK would write ((H, W) after its transpose)."""
    pre = list(parser.get_parsed_content("preprocessing", instantiate=True).transforms)
    for t in pre:
        if isinstance(t, LoadImaged):
            t._loader.image_only = False
    data = {"image": str(image_path)}
    for t in pre:
        data = t(data)
    data["pred"] = pred_fn(data)
    for t in parser.get_parsed_content("post_transforms", instantiate=True).transforms:
        data = t(data)
    result = data["pred"]
    current = tuple(result.shape[1:])  # Restored(has_channel=True)
    spatial = tuple(int(v) for v in data["image"].meta["spatial_shape"])[-len(current):]
    assert current == spatial, "MONAI Label's Restored would resize the label"
    return data, np.asarray(result).transpose()  # write_itk


def test_configs_parse_from_another_folder_with_bundle_root(tmp_path, monkeypatch):
    """Both configs parse from another working directory once ``bundle_root`` is set, with the keys the apps use."""
    monkeypatch.chdir(tmp_path)
    infer = parse("inference.json")
    for key in ("network_def", "preprocessing", "postprocessing", "post_transforms", "inferer", "displayable_configs"):
        assert infer.get_parsed_content(key, instantiate=True) is not None, key
    assert set(infer.get_parsed_content("displayable_configs")) == {"threshold"}
    train = parse("train.json")
    for key in ("network", "train#dataset", "validate#dataset"):
        assert train.get_parsed_content(key, instantiate=True) is not None, key
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())


def test_preprocessing_loads_only_the_image():
    pre = parse("inference.json").get_parsed_content("preprocessing", instantiate=True).transforms
    loaders = [t for t in pre if isinstance(t, LoadImaged)]
    assert len(loaders) == 1 and tuple(loaders[0].keys) == ("image",)


def test_metadata_channel_def_names_the_label_values():
    meta = json.loads((REPO_ROOT / "configs" / "metadata.json").read_text())
    pred = next(iter(meta["network_data_format"]["outputs"].values()))
    assert pred["channel_def"] == {"0": "background", "1": "benign", "2": "malignant"}


def test_chain_stays_invertible_in_another_thread_and_a_pickled_copy(tmp_path):
    """MONAI keeps a transform's ``tracing`` per thread and drops it when pickled: the chain's inner flip, crop, pad
    and resize must stay untraced in the inference writer's thread and in a DataLoader worker's copy of the chain,
    or ``Invertd`` meets their entries (a right breast: the image is flipped)."""
    image_path, _, _ = planted_lesion(tmp_path, "R", "CC", seed=0)
    parser = parse("inference.json", **SIZE)
    pre = parser.get_parsed_content("preprocessing", instantiate=True)
    post = parser.get_parsed_content("post_transforms", instantiate=True)
    ours = {"ResampleToSpacingd", "OrientBreastd", "CropBreastd", "BestCenterWindowd"}

    def label(chain) -> np.ndarray:
        data = chain({"image": str(image_path)})
        assert {op["class"] for op in data["image"].applied_operations} <= ours
        data["pred"] = {"saliency": torch.rand(2, *SIZE["image_size"], generator=torch.Generator().manual_seed(0)),
                        "y_global": torch.tensor([0.9, 0.1])}
        return np.asarray(post(data)["pred"])

    expected = label(pre)
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert np.array_equal(pool.submit(label, pre).result(), expected)
    assert np.array_equal(label(pickle.loads(pickle.dumps(pre))), expected)


@pytest.mark.parametrize("laterality,view,spacing", [("L", "CC", None), ("R", "MLO", None), ("R", "CC", 0.05)])
def test_label_lands_on_the_planted_lesion(tmp_path, laterality, view, spacing):
    """A model-frame map equal to the lesion (what a perfect network returns) comes back from the post-processing
    as a uint8 label of the input's size and MONAI Label's axis order on the same raw pixels: the flip, breast
    crop, window and (with a pixel spacing) resampling are undone by ``Invertd``."""
    for seed in range(20):  # a phantom whose lesion lies inside the model window (the window cuts the breast)
        image_path, lesion, mask_path = planted_lesion(tmp_path, laterality, view, seed=seed)
        target = model_frame_mask(image_path, mask_path, spacing)
        scale = 1.0 if spacing is None else (spacing / 0.1) ** 2  # model-frame pixels per raw pixel (0.1 mm frame)
        if abs(float(target[0].sum()) - lesion.sum() * scale) < 0.05 * lesion.sum() * scale:
            break
    else:
        pytest.fail("no phantom with its lesion inside the window")
    parser = parse("inference.json", **SIZE, **{"frame_transforms#spacing": spacing})
    data, written = run_as_monailabel(
        parser, image_path, lambda d: {"saliency": target, "y_global": torch.tensor([0.9, 0.1])}
    )
    assert data["pred"].dtype == torch.uint8 and tuple(data["pred"].shape) == (RAW[1], RAW[0])
    assert written.shape == RAW and set(np.unique(written)) <= {0, 1}
    iou = (written.astype(bool) & lesion).sum() / (written.astype(bool) | lesion).sum()
    assert iou > (0.99 if spacing is None else 0.9), iou


def test_threshold_and_classes(tmp_path):
    """0 below the threshold, else 1 + the strongest class; the threshold comes from ``displayable_configs``."""
    image_path, _, _ = planted_lesion(tmp_path, "L", "CC", seed=4)
    maps = torch.zeros(2, *SIZE["image_size"])
    maps[0, 100:150, 100:150] = 0.6  # benign only
    maps[1, 200:250, 100:150] = 0.8  # malignant stronger than benign
    maps[0, 200:250, 100:150] = 0.7
    maps[1, 300:320, 100:150] = 0.3  # below 0.5
    for threshold, expected in ((0.5, {0, 1, 2}), (0.75, {0, 2}), (0.25, {0, 1, 2})):
        parser = parse("inference.json", **SIZE, **{"displayable_configs#threshold": str(threshold)})
        _, written = run_as_monailabel(parser, image_path, lambda d: {"saliency": maps.clone()})
        assert set(np.unique(written)) == expected, threshold


def test_real_network_output_goes_through(tmp_path):
    """The (small, random) network's own output dict, as MONAI Label gets it, ends as a uint8 label map."""
    image_path, _, _ = planted_lesion(tmp_path, "R", "CC", seed=5)
    parser = parse(
        "inference.json",
        **SIZE,
        device="cpu",
        **NARROW,
    )
    network = parser.get_parsed_content("network_def", instantiate=True).eval()
    inferer = parser.get_parsed_content("inferer", instantiate=True)

    def predict(data):
        with torch.no_grad():
            out = inferer(data["image"][None], network)
        return {key: value[0] for key, value in out.items()}  # decollate_batch(...)[0]

    data, written = run_as_monailabel(parser, image_path, predict)
    assert written.shape == RAW and written.dtype == np.uint8 and set(np.unique(written)) <= {0, 1, 2}
    assert not os.path.exists(REPO_ROOT / "outputs" / "inference" / f"{image_path.stem}_saliency.nii.gz")


def test_split_label_map_gives_masks_and_labels(tmp_path):
    """A datastore label image (0/1/2) becomes the per-class masks and the image-level labels."""
    image_path, lesion, _ = planted_lesion(tmp_path, "L", "CC", seed=1)
    label_map = np.zeros(RAW, np.uint8)
    label_map[lesion] = 2
    Image.fromarray(label_map).save(tmp_path / "label.png")
    item = load_transforms(min_size=64, model_frame_size=SIZE["image_size"])
    data = Compose(item)({"image": str(image_path), "label_map": str(tmp_path / "label.png")})
    assert data["label"].tolist() == [0.0, 1.0] and data["has_mask"].tolist() == [1.0, 1.0]
    assert torch.equal(data["mask"][1].bool(), torch.as_tensor(lesion)) and not data["mask"][0].any()
    label_map[0, 0] = 7
    Image.fromarray(label_map).save(tmp_path / "bad.png")
    with pytest.raises(Exception) as error:
        Compose(item)({"image": str(image_path), "label_map": str(tmp_path / "bad.png")})
    message = failure_message(error.value)
    assert "bad.png" in message and "label map values [0, 2, 7]" in message, message


def test_train_json_takes_the_datastore_list(tmp_path):
    """``configs/train.json`` run as MONAI Label's train task runs it (``monai.bundle.run`` with its overrides):
    ``{"image", "label"}`` items with label images train every stage for ``train#trainer#max_epochs`` epochs."""
    from monai.bundle import run

    from glam_bundle.data.phantom import generate_dataset

    data = generate_dataset(tmp_path / "data", n_images=6, height=736, width=480, seed=0,
                            prevalence={"benign": 0.5, "malignant": 0.5})
    items = [item for split in json.loads(data.read_text()).values() for item in split]
    datastore = []
    for index, item in enumerate(items):
        label_map = np.zeros(RAW, np.uint8)
        for value, name in ((1, "benign"), (2, "malignant")):
            if f"mask_{name}" in item:
                label_map[np.asarray(Image.open(data.parent / item[f"mask_{name}"])) > 0] = value
        Image.fromarray(label_map).save(tmp_path / f"label_{index}.png")
        datastore.append({"image": str(data.parent / item["image"]), "label": str(tmp_path / f"label_{index}.png")})
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({**SMALL_NETWORK_OVERRIDES, "batch_size": 2, "max_crop_noise": [25, 25],
                                  "max_crop_size_noise": 25}))
    run(run_id="run", init_id=None, final_id=None, meta_file=str(REPO_ROOT / "configs" / "metadata.json"),
        config_file=str(REPO_ROOT / "configs" / "train.json"), bundle_root=str(REPO_ROOT), device="cpu",
        output_dir=str(tmp_path / "out"), ckpt_dir=str(tmp_path / "models"), cache_dir=str(tmp_path / "cache"),
        presets=[str(preset)], **{"train#trainer#max_epochs": 1, "train#dataset#data": datastore[:4],
                                  "validate#dataset#data": datastore[4:], "train#handlers": []})
    assert (tmp_path / "models" / "model.pt").is_file()
    written = json.loads((tmp_path / "out" / "datastore_datalist.json").read_text())
    assert [item["label_map"] for item in written["training"]] == [item["label"] for item in datastore[:4]]


def test_bundle_writer_uses_the_same_inverse(tmp_path):
    """``--write_label true``: the bundle's own writer puts the same label map next to its usual outputs, on the
    input image's pixels (raw size, the breast crop's cut-away columns background); the usual outputs stay."""
    from monai.bundle import ConfigWorkflow


    image_path, _, _ = planted_lesion(tmp_path, "R", "CC", seed=2)
    out = tmp_path / "out"
    workflow = ConfigWorkflow(
        config_file=str(REPO_ROOT / "configs" / "inference.json"), meta_file=str(REPO_ROOT / "metadata.json"),
        workflow_type="infer", logging_file=False, allow_random_weights=True, dataset_dir=str(tmp_path),
        output_dir=str(out), write_label=True, **{**SMALL_NETWORK_OVERRIDES, **SIZE},
        **{"displayable_configs#threshold": 1e-6},  # every pixel of the window (S_c > 0) is a lesion of some class
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    stem = image_path.stem
    assert (out / f"{stem}_saliency.nii.gz").is_file() and (out / f"{stem}_figure.png").is_file()
    label = np.asarray(Image.open(out / f"{stem}_label.png"))
    assert label.shape == RAW and label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1, 2}
    raw = np.asarray(Image.open(image_path))
    window = label > 0  # threshold ~0: exactly the model window's footprint on the raw image
    assert window.any() and not window.all()
    assert window.sum() <= SIZE["image_size"][0] * SIZE["image_size"][1]
    assert (raw[window] > 0).mean() > 0.5  # the window sits on the breast


@pytest.mark.parametrize("masked", [False, True], ids=["paper", "mask_saliency_to_breast"])
def test_torchscript_fallback_gives_the_same_label(tmp_path, masked):
    """Without ``models/model.pt`` MONAI Label runs ``models/model.ts`` and keeps ``outputs[0]``: exported from
    ``saliency_network_def`` (S_c only, docs/export.md) it goes through the same post-processing to the same label
    as the eager network; with ``mask_saliency_to_breast`` the traced file derives the breast mask itself."""
    from monai.bundle import ckpt_export

    small = {**NARROW, "mask_saliency_to_breast": masked}
    parser = parse("inference.json", **SIZE, device="cpu", **small)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def", instantiate=True).eval()
    torch.save(network.state_dict(), tmp_path / "model.pt")
    ckpt_export(
        net_id="saliency_network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(tmp_path / "model.pt"),
        meta_file=str(REPO_ROOT / "metadata.json"), config_file=str(REPO_ROOT / "configs" / "inference.json"),
        use_trace=True, input_shape=[1, 1, *SIZE["image_size"]], bundle_root=str(REPO_ROOT), **SIZE, **small,
    )
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    image_path, _, _ = planted_lesion(tmp_path, "R", "MLO", seed=6)
    threshold = {"displayable_configs#threshold": 0.3, "mask_saliency_to_breast": masked}
    with torch.no_grad():
        _, from_eager = run_as_monailabel(  # as the bundle's own inference runs it: with the chain's breast mask
            parse("inference.json", **SIZE, **threshold), image_path,
            lambda d: {key: value[0] for key, value in
                       network(d["image"][None], breast_mask=d["breast_mask"][None] if masked else None).items()},
        )
        _, from_ts = run_as_monailabel(
            parse("inference.json", **SIZE, **threshold), image_path, lambda d: scripted(d["image"][None].as_tensor())[0]
        )
    assert from_ts.shape == RAW and (from_ts != from_eager).mean() < 1e-3


def test_label_stays_in_the_breast_with_the_breast_mask_option(tmp_path):
    """MONAI Label runs the network on the image alone (no ``breast_mask`` argument); with
    ``mask_saliency_to_breast`` the post-processing zeroes the map outside the breast before the threshold, as
    the bundle's own masked maps are."""
    image_path, _, _ = planted_lesion(tmp_path, "R", "CC", seed=7)
    raw = np.asarray(Image.open(image_path))
    ones = lambda d: {"saliency": torch.ones(2, *SIZE["image_size"])}  # noqa: E731
    labelled = {}
    for masked in (False, True):
        parser = parse("inference.json", **SIZE, mask_saliency_to_breast=masked,
                       **{"displayable_configs#threshold": 0.5})
        _, written = run_as_monailabel(parser, image_path, ones)
        labelled[masked] = written > 0
    assert (raw[labelled[False]] == 0).mean() > 0.05  # unmasked: the window's background is labelled too
    assert (raw[labelled[True]] == 0).mean() < 0.01 and labelled[True].sum() > 0.8 * (labelled[False] & (raw > 0)).sum()


def test_network_derives_the_breast_mask_when_given_only_the_image(tmp_path):
    """Weights trained with ``mask_saliency_to_breast`` see the breast mask in the bundle's own workflows; MONAI Label
    (and the exported files) pass only the image, and the network then derives the mask from it: same outputs."""
    image_path, _, _ = planted_lesion(tmp_path, "L", "MLO", seed=8)
    parser = parse("inference.json", **SIZE, device="cpu", mask_saliency_to_breast=True, **NARROW)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def", instantiate=True).eval()
    data = parser.get_parsed_content("preprocessing", instantiate=True)({"image": str(image_path)})
    with torch.no_grad():
        given = network(data["image"][None], breast_mask=data["breast_mask"][None])
        derived = network(data["image"][None])
        network.breast_mask_from_image = False
        unmasked = network(data["image"][None])
    assert torch.equal(given["saliency_global"], derived["saliency_global"])
    assert torch.equal(given["patch_locations"], derived["patch_locations"])
    assert not torch.equal(given["saliency_global"], unmasked["saliency_global"])


def test_label_overlay_script(tmp_path):
    """scripts/label_overlay.py draws a label map over its image (and refuses a label of another size)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("label_overlay", REPO_ROOT / "scripts" / "label_overlay.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    image_path, lesion, mask_path = planted_lesion(tmp_path, "L", "CC", seed=9)
    label = np.zeros(RAW, np.uint8)
    label[lesion] = 1
    Image.fromarray(label).save(tmp_path / "label.png")
    assert script.main(["--out", str(tmp_path / "o.png"), "--case", str(image_path), str(tmp_path / "label.png"),
                        str(mask_path)]) == 0
    with Image.open(tmp_path / "o.png") as figure:
        assert figure.format == "PNG"
    Image.fromarray(label[:100]).save(tmp_path / "small.png")
    with pytest.raises(SystemExit):
        script.main(["--out", str(tmp_path / "p.png"), "--case", str(image_path), str(tmp_path / "small.png")])
