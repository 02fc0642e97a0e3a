#!/usr/bin/env bash
# Set up the environment and run the main job on built-in synthetic data, on 2 CPU cores:
# synthetic mammograms -> the paper's staged training (global module, patch selection, local module, joint
# training) at the demo preset (configs/presets/demo.json: a 736x480 frame) -> evaluation (Table 1 layout, S_g,
# S_l and S_c side by side, and an untrained model for comparison) -> inference on the test split.
# Everything is written under outputs/, models/ and cache/ (all git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
N_IMAGES="${N_IMAGES:-200}"
DEFAULT_EPOCHS="{'global': 6, 'local': 3, 'joint': 2}"
EPOCHS="${EPOCHS:-$DEFAULT_EPOCHS}"
PRESET=configs/presets/demo.json
# Demo training settings (not sizes): the paper's search ranges (appendix F) hold lr, λ and t; these are one draw.
TRAINING="{'learning_rate': 3e-4, 'sparsity_weight': 1e-3, 'network_def#global_percent_t': 0.05, 'batch_size': 8}"
START=$(date +%s)

echo "== 1/5 synthetic mammograms (outputs/synthetic: $N_IMAGES phantoms at 736x480, lesions 2x larger and 1.5x brighter)"
$PY scripts/make_phantoms.py --out_dir outputs/synthetic --n_images "$N_IMAGES" --height 736 --width 480 \
    --seed 0 --fractions 0.7 0.1 0.2 --lesion_scale 2 --contrast_scale 1.5

echo "== 2/5 staged training (models/model_global.pt -> model_local.pt -> model.pt; TensorBoard: outputs/train_*)"
$PY -m monai.bundle run --config_file configs/train.json --presets "['$PRESET']" --max_epochs "$EPOCHS" \
    --overrides "$TRAINING"

echo "== 3/5 evaluation of the trained model on the test split (outputs/evaluate)"
$PY -m monai.bundle run --config_file "['configs/train_global.json','configs/evaluate.json','$PRESET']"

echo "== 4/5 evaluation of an untrained model, for comparison (outputs/evaluate_untrained)"
$PY -c "import torch; from monai.bundle import ConfigParser; p = ConfigParser(); \
p.read_config(['configs/train_global.json', '$PRESET']); torch.manual_seed(0); \
torch.save(p.get_parsed_content('network_def').state_dict(), 'models/untrained.pt')"
$PY -m monai.bundle run --config_file "['configs/train_global.json','configs/evaluate.json','$PRESET']" \
    --ckpt_path models/untrained.pt --output_dir outputs/evaluate_untrained

echo "== 5/5 inference on the test split (outputs/inference)"
$PY -m monai.bundle run --config_file "['configs/inference.json','$PRESET']" \
    --datalist outputs/synthetic/datalist.json --datalist_split test

$PY scripts/tensorboard_figure.py outputs/train_joint outputs/tensorboard_joint.png
echo
echo "done in $(( $(date +%s) - START )) s:"
echo "  report (Table 1 layout)  outputs/evaluate/table.md   (untrained: outputs/evaluate_untrained/table.md)"
echo "  figures                  outputs/inference/*_figure.png, outputs/evaluate/pr_curve_*.png"
echo "  TensorBoard              tensorboard --logdir outputs   (as a PNG: outputs/tensorboard_joint.png)"
echo "  weights                  models/model.pt"
