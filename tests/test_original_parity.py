"""Parity with the original implementation: import its checkpoint and reproduce its golden outputs."""

import subprocess
import sys

import numpy as np
import torch

from glam_bundle.networks import GLAM
from tests.conftest import ORIGINAL_CHECKPOINT, REPO_ROOT, require


def test_import_script_and_golden_outputs(tmp_path):
    src = require(ORIGINAL_CHECKPOINT / "random_init_seed0.ckpt")
    golden = np.load(require(ORIGINAL_CHECKPOINT / "golden_0_L-CC.npz"))
    dst = tmp_path / "model.pt"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "import_original_checkpoint.py"), str(src), str(dst)],
        capture_output=True, text=True, check=True,
    )
    assert "352 tensors converted" in result.stdout
    model = GLAM()
    model.load_state_dict(torch.load(dst, map_location="cpu", weights_only=True), strict=True)
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(golden["image"]))
    np.testing.assert_allclose(out["y_global"].numpy(), golden["prediction"], atol=1e-4, rtol=0)
    assert np.array_equal(out["patch_locations"].numpy(), golden["patch_locations"])
    assert np.abs(out["saliency"].numpy() - golden["saliency"]).max() <= 1e-3


def test_converter_rejects_incomplete_checkpoints():
    import pytest

    from glam_bundle.checkpoint import convert_original_state_dict, load_original_checkpoint

    original = load_original_checkpoint(require(ORIGINAL_CHECKPOINT / "random_init_seed0.ckpt"))
    model = GLAM()
    extra = dict(original, **{"some_extra.weight": torch.zeros(1)})
    state, ignored, kept = convert_original_state_dict(extra, model)
    assert ignored == ["some_extra.weight"] and all(k.startswith(("aggregation", "fusion")) for k in kept)
    del original["detection_network.gn_conv_last.weight"]
    with pytest.raises(KeyError, match="missing"):
        convert_original_state_dict(original, model)
    bad = dict(extra)
    bad["global_network.downsampling_branch.first_conv.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="shape"):
        convert_original_state_dict(bad, model)
