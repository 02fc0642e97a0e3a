"""Convert a checkpoint of the original GLAM implementation into this bundle's weights file.

    python scripts/import_original_checkpoint.py SRC DST [--seed 0] [--network_args '{"use_fusion": false}']

SRC is a state dict in the original key layout (e.g. the authors' model_sep.ckpt / model_joint.ckpt);
it is read with ``torch.load(..., weights_only=True)``: a file whose pickle would run code, an unreadable file
or one with missing or wrongly shaped keys ends the script with one line, ``CheckpointError: <file>: ...``, and
exit status 1 (nothing is written). DST (e.g. models/model.pt) receives a state dict of
``glam_bundle.networks.GLAM`` that loads strictly; the parts the release lacks (attention aggregation,
fusion) are initialised from ``--seed`` and listed on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import fire
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glam_bundle.checkpoint import (  # noqa: E402
    CheckpointError,
    convert_original_state_dict,
    load_original_checkpoint,
)
from glam_bundle.networks import GLAM  # noqa: E402


def main(src: str, dst: str, seed: int = 0, network_args: str | dict | None = None) -> None:
    """Convert SRC (original layout) into DST (bundle layout); see the module docstring."""
    kwargs = json.loads(network_args) if isinstance(network_args, str) else dict(network_args or {})
    torch.manual_seed(seed)
    network = GLAM(**kwargs)
    state, ignored, kept = convert_original_state_dict(load_original_checkpoint(src), network, source=src)
    network.load_state_dict(state, strict=True)
    dst_path = Path(dst)
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dst_path.parent, suffix=".tmp", delete=False) as handle:
        torch.save(state, handle)
    os.replace(handle.name, dst_path)
    print(f"wrote {dst_path} ({len(state) - len(kept)} tensors converted from {src})")
    if ignored:
        print(f"ignored {len(ignored)} keys of the source: {', '.join(ignored)}")
    if kept:
        print(f"initialised here (absent from the original release): {', '.join(kept)}")


def cli(argv: list[str] | None = None) -> int:
    """Run :func:`main` from the command line; a CheckpointError or a missing SRC is one line on stderr, status 1."""
    try:
        fire.Fire(main, command=argv)
    except CheckpointError as error:
        print(f"CheckpointError: {error}", file=sys.stderr)
        return 1
    except FileNotFoundError as error:
        print(f"FileNotFoundError: {error.filename or error}: checkpoint not found", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
