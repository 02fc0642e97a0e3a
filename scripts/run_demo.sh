#!/usr/bin/env bash
# Set up the environment and run the main job on built-in synthetic data:
# synthetic 2944x1920 mammograms -> global-module training -> evaluation (Table 1 layout) -> inference.
# Everything is written under outputs/ and models/ (both git-ignored). Runs on CPU in a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
N_IMAGES="${N_IMAGES:-16}"
EPOCHS="${EPOCHS:-3}"

echo "== 1/4 synthetic mammograms (outputs/synthetic)"
$PY scripts/make_phantoms.py --out_dir outputs/synthetic --n_images "$N_IMAGES" --height 2944 --width 1920 \
    --seed 0 --fractions 0.6 0.2 0.2

echo "== 2/4 training the global module (models/model_global.pt, TensorBoard logs in outputs/train_global)"
$PY -m monai.bundle run training --config_file configs/train_global.json --max_epochs "$EPOCHS"

echo "== 3/4 evaluation on the test split (outputs/evaluate)"
$PY -m monai.bundle run --config_file "['configs/train_global.json','configs/evaluate.json']" \
    --ckpt_path models/model_global.pt

echo "== 4/4 inference on the test split (outputs/inference)"
$PY -m monai.bundle run --config_file configs/inference.json --ckpt_path models/model_global.pt \
    --datalist outputs/synthetic/datalist.json --datalist_split test

echo "done: see outputs/evaluate and outputs/inference"
