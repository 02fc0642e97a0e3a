#!/usr/bin/env bash
# Set up the environment and run the main job on built-in synthetic data, on 2 CPU cores:
# synthetic mammograms -> the paper's staged training (global module, patch selection, local module, joint
# training) at the demo preset (configs/presets/demo.json: a 368x240 frame, and configs/presets/demo_training.json:
# its training settings) -> evaluation (Table 1 layout, S_g, S_l and S_c side by side, and an untrained model for
# comparison) -> inference on the test split.
# Everything is written under outputs/, models/ and cache/ (all git-ignored), or under $DEMO_DIR when set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
N_IMAGES="${N_IMAGES:-732}"
DEFAULT_EPOCHS="{'global': 16, 'local': 10, 'joint': 2}"
EPOCHS="${EPOCHS:-$DEFAULT_EPOCHS}"
DIR="${DEMO_DIR:-.}"
OUT="$DIR/outputs"
PRESETS="'configs/presets/demo.json','configs/presets/demo_training.json'"
PATHS=(--dataset_dir "$OUT/synthetic" --ckpt_dir "$DIR/models" --cache_dir "$DIR/cache")
START=$(date +%s)

echo "== 1/5 synthetic mammograms ($OUT/synthetic: $N_IMAGES phantoms at 368x240; lesions 1.5x brighter, benign"
echo "   2x and malignant 4x larger than realistic, so that they cover a few of the global module's 16-px cells)"
$PY scripts/make_phantoms.py --out_dir "$OUT/synthetic" --n_images "$N_IMAGES" --height 368 --width 240 \
    --seed 0 --fractions 0.7 0.1 0.2 --lesion_scale benign=2 malignant="${MALIGNANT_SCALE:-4}" --contrast_scale 1.5 \
    --calcification_mask cluster --max_attempts 20

echo "== 2/5 staged training ($DIR/models: model_global.pt -> model_local.pt -> model.pt; TensorBoard: $OUT/train_*)"
$PY -m monai.bundle run --config_file configs/train.json --presets "[$PRESETS]" --max_epochs "$EPOCHS" \
    "${PATHS[@]}" --output_dir "$OUT"

echo "== 3/5 evaluation of the trained model on the test split ($OUT/evaluate)"
$PY -m monai.bundle run --config_file "['configs/train_global.json','configs/evaluate.json',$PRESETS]" \
    "${PATHS[@]}" --output_dir "$OUT/evaluate"

echo "== 4/5 evaluation of an untrained model, for comparison ($OUT/evaluate_untrained)"
$PY -c "import sys, torch; from monai.bundle import ConfigParser; p = ConfigParser(); \
p.read_config(['configs/train_global.json', $PRESETS]); torch.manual_seed(0); \
torch.save(p.get_parsed_content('network_def').state_dict(), sys.argv[1])" "$DIR/models/untrained.pt"
$PY -m monai.bundle run --config_file "['configs/train_global.json','configs/evaluate.json',$PRESETS]" \
    "${PATHS[@]}" --ckpt_path "$DIR/models/untrained.pt" --output_dir "$OUT/evaluate_untrained"

echo "== 5/5 inference on the test split ($OUT/inference)"
$PY -m monai.bundle run --config_file "['configs/inference.json',$PRESETS]" --ckpt_path "$DIR/models/model.pt" \
    --datalist "$OUT/synthetic/datalist.json" --datalist_split test --output_dir "$OUT/inference" --load_masks true

$PY scripts/tensorboard_figure.py "$OUT/train_joint" "$OUT/tensorboard_joint.png"
$PY scripts/demo_summary.py "$OUT/evaluate/metrics.json" "$OUT/evaluate_untrained/metrics.json" || true
echo
echo "done in $(( $(date +%s) - START )) s:"
echo "  report (Table 1 layout)  $OUT/evaluate/table.md   (untrained: $OUT/evaluate_untrained/table.md)"
echo "  figures                  $OUT/inference/*_figure.png, $OUT/evaluate/pr_curve_*.png"
echo "  TensorBoard              tensorboard --logdir $OUT   (as a PNG: $OUT/tensorboard_joint.png)"
echo "  weights                  $DIR/models/model.pt"
