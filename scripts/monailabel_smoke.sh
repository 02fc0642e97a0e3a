#!/usr/bin/env bash
# End-to-end check of the bundle in MONAI Label's stock "monaibundle" app, as a 3D Slicer / OHIF client sees it:
#   1. a virtual environment of its own (never the bundle's .venv) with monailabel 0.8.5 and this bundle, pinned by
#      requirements-monailabel.txt; reused when present (the first install takes ~10 min on 2 cores, ~8 GB);
#   2. the monaibundle sample app copied out of the monailabel install, with this bundle copied under
#      model/glam_bundle_segmentation, its configs set to the demo frame (configs/presets/demo*.json) and a
#      randomly initialised models/model.pt (plumbing, not accuracy; GLAM_SMOKE_CKPT=FILE uses a trained one);
#   3. a folder of synthetic studies (scripts/make_phantoms.py) with their lesion masks as final labels (0/1/2);
#   4. `monailabel start_server` on 127.0.0.1 with the offline confs (zoo_source ngc, sam2 false);
#   5. GET /info; POST /infer/glam_bundle_segmentation?image=<id> for a left-breast phantom with a lesion and for
#      its left-right mirror image (a right breast), the returned labels checked by scripts/monailabel_check_label.py:
#      size (H, W), uint8 values 0/1/2, the two labels exact mirrors of each other (the flip, crop and window undone,
#      whatever the weights), the planted lesion (required with a trained GLAM_SMOKE_CKPT); and once more with the
#      displayable threshold at 0: the whole breast labelled;
#   6. POST /train/glam_bundle_segmentation with max_epochs 1, polled until it ends;
#   7. the server, and everything it started, stopped by a trap whatever happens.
# Every step runs even when an earlier one failed (where it can), and a summary lists what failed; exit 1 then.
#
# Settings (environment):
#   GLAM_MONAILABEL_VENV   virtual environment (default /tmp/glam_monailabel_venv; created or reused)
#   GLAM_SMOKE_DIR         work folder (default: a new /tmp/glam_monailabel_smoke.XXXXXX; kept on failure)
#   GLAM_SMOKE_KEEP=1      keep the work folder after a pass too
#   GLAM_SMOKE_PORT        server port (default: a free one)
#   GLAM_SMOKE_CKPT        a trained checkpoint at the demo sizes (e.g. models/model.pt after scripts/run_demo.sh):
#                          the planted lesions must then be found
#   GLAM_SMOKE_N_IMAGES    number of phantoms (default 8)
#   GLAM_SMOKE_TRAIN_TIMEOUT  seconds to wait for the training run (default 1200)
#   GLAM_SMOKE_THRESHOLD_KEY  the displayable config that sets the label threshold (default: the one key of the
#                          model's /info config whose name holds "threshold")
#   GLAM_SMOKE_REINSTALL=1 reinstall the environment even if it looks complete
#   GLAM_SMOKE_BUNDLE_NO_DEPS=1  install the bundle with --no-deps when its dependency ranges fight monailabel's
#                          (diagnosis only: a pass then does not show that the bundle installs cleanly)
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GLAM_MONAILABEL_VENV:-/tmp/glam_monailabel_venv}"
REQ="$REPO/requirements-monailabel.txt"
MODEL=glam_bundle_segmentation
N_IMAGES="${GLAM_SMOKE_N_IMAGES:-8}"
TRAIN_TIMEOUT="${GLAM_SMOKE_TRAIN_TIMEOUT:-1200}"
START=$(date +%s)

if [ -n "${GLAM_SMOKE_DIR:-}" ]; then
    WORK="$GLAM_SMOKE_DIR"
    mkdir -p "$WORK"
else
    WORK="$(mktemp -d /tmp/glam_monailabel_smoke.XXXXXX)"
fi
WORK="$(cd "$WORK" && pwd)"
SERVER_PID=""
FAILED=()

log() { echo "== [$(( $(date +%s) - START )) s] $*"; }
fail() { echo "FAIL: $*"; FAILED+=("$*"); }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        log "stopping the server (process group $SERVER_PID) and what it started"
        kill -TERM -- "-$SERVER_PID" 2>/dev/null
        for _ in $(seq 1 20); do
            kill -0 -- "-$SERVER_PID" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL -- "-$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    if [ "$rc" -eq 0 ] && [ "${#FAILED[@]}" -eq 0 ] && [ "${GLAM_SMOKE_KEEP:-0}" != 1 ] && [ -z "${GLAM_SMOKE_DIR:-}" ]; then
        rm -rf "$WORK"
    else
        echo "work folder kept: $WORK (server log: $WORK/server.log)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------------------------------------------- 1. venv
PY="$VENV/bin/python"
STAMP="$VENV/.glam_monailabel_smoke"
WANT_STAMP="$(cat "$REQ" "$REPO/pyproject.toml" | sha256sum | cut -c1-16) $REPO ${GLAM_SMOKE_BUNDLE_NO_DEPS:-0}"
if [ ! -x "$PY" ]; then
    log "creating $VENV"
    python3 -m venv "$VENV" || { fail "python3 -m venv $VENV"; exit 1; }
fi
if [ "${GLAM_SMOKE_REINSTALL:-0}" = 1 ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT_STAMP" ] \
        || ! "$PY" -c "import monailabel, glam_bundle" 2>/dev/null; then
    T0=$(date +%s)
    log "installing monailabel and the bundle into $VENV (~10 min and ~8 GB the first time)"
    rm -f "$STAMP" "$STAMP.conflict"
    # pip's notes about this machine's extra package folders, and setuptools' deprecation banners, are left out
    quiet_pip() { grep -vE "^WARNING: Location '|^ +(!!|\*{10,}|$)|BuildBackendWarning|license|SPDX|2027-Feb|builds will no|packaging.python.org|corresp\(dist|Editable installation|careful with folders|name as your package|WheelFile\(wheel_path" >&2; }
    "$PY" -m pip install --quiet --upgrade pip 2> >(quiet_pip) || true
    if ! SAM2_BUILD_CUDA=0 "$PY" -m pip install --quiet -r "$REQ" 2> >(quiet_pip); then
        fail "pip install -r requirements-monailabel.txt"
        exit 1
    fi
    if ! "$PY" -m pip install -e "$REPO" -c "$REQ" >"$WORK/pip_bundle.log" 2>&1; then
        grep -E "conflict|depends on|requested|ERROR" "$WORK/pip_bundle.log" | sed 's/^/   pip: /'
        if [ "${GLAM_SMOKE_BUNDLE_NO_DEPS:-0}" = 1 ]; then
            fail "the bundle's dependency ranges conflict with requirements-monailabel.txt (installed with --no-deps)"
            "$PY" -m pip install --quiet --no-deps -e "$REPO" 2> >(quiet_pip) || exit 1
            grep -E "depends on|requested" "$WORK/pip_bundle.log" > "$STAMP.conflict"
        else
            fail "the bundle's dependency ranges conflict with requirements-monailabel.txt (GLAM_SMOKE_BUNDLE_NO_DEPS=1 goes on without them)"
            exit 1
        fi
    fi
    echo "$WANT_STAMP" > "$STAMP"
    log "installed in $(( $(date +%s) - T0 )) s; $(du -sh "$VENV" | cut -f1) in $VENV"
else
    log "reusing $VENV"
    if [ -f "$STAMP.conflict" ]; then
        sed 's/^/   pip (at install): /' "$STAMP.conflict"
        fail "the bundle's dependency ranges conflict with requirements-monailabel.txt (installed with --no-deps)"
    fi
fi
"$PY" -c "import torch, torchvision, monai, monailabel, pydicom, numpy, jsonschema, glam_bundle, importlib.metadata as m; \
print('   torch', torch.__version__, '| torchvision', torchvision.__version__, '| monai', monai.__version__, \
'| monailabel', monailabel.__version__, '| pydicom', pydicom.__version__, '| numpy', numpy.__version__, \
'| jsonschema', m.version('jsonschema'), '| glam_bundle from', glam_bundle.__file__)" \
    || fail "the environment does not import"
# the bundle's readers under this environment's pydicom (2.x): what BundleInferTask's preprocessing imports
"$PY" -c "import glam_bundle.data.readers, glam_bundle.data.dicom_reader, glam_bundle.transforms" \
    || fail "glam_bundle.data.readers / dicom_reader / transforms do not import under pydicom $("$PY" -c 'import pydicom; print(pydicom.__version__)' 2>/dev/null)"

# ---------------------------------------------------------------------------------------------------- 2. app
APP="$WORK/apps/monaibundle"
BUNDLE="$APP/model/$MODEL"
rm -rf "$WORK/apps"
log "monaibundle app -> $APP (monailabel apps --download, copied from the install, no network)"
"$PY" -m monailabel.main apps --download --name monaibundle --output "$WORK/apps" >/dev/null \
    || { fail "monailabel apps --download --name monaibundle"; exit 1; }
mkdir -p "$BUNDLE/models"
# -L: a symlink in the bundle (e.g. configs/metadata.json -> ../metadata.json) is copied as the file it names
cp -rL "$REPO/configs" "$REPO/glam_bundle" "$BUNDLE/"
cp "$REPO/LICENSE" "$REPO/README.md" "$BUNDLE/" 2>/dev/null
find "$BUNDLE" -name __pycache__ -type d -prune -exec rm -rf {} +
# the demo frame: MONAI Label reads only configs/inference.json and configs/train.json, so the presets are merged
# into the copies (inference: demo.json + demo_training.json, as scripts/run_demo.sh infers; train.json: its
# "presets" setting where it has one, else the same merge)
"$PY" - "$BUNDLE" <<'EOF' || fail "setting the bundle copy to the demo frame"
import json, os, sys
from monai.bundle import ConfigParser
bundle = sys.argv[1]
cfg = os.path.join(bundle, "configs")
presets = [os.path.join(cfg, "presets", n) for n in ("demo.json", "demo_training.json")]
for name in ("inference.json", "train.json"):
    path = os.path.join(cfg, name)
    if not os.path.isfile(path):
        print(f"   {name}: none")
        continue
    parser = ConfigParser()
    parser.read_config(path)
    applied, skipped = [], []
    if name == "train.json" and "presets" in parser.config:
        parser["presets"] = presets
        applied.append("presets")
    else:
        for preset in presets:
            with open(preset) as f:
                for key, value in json.load(f).items():
                    if key.startswith("_"):
                        continue
                    if key.split("#")[0] in parser.config:
                        parser[key] = value
                        applied.append(key)
                    else:
                        skipped.append(key)
    ConfigParser.export_config_file(parser.config, path, indent=4)
    print(f"   {name}: set {applied}" + (f"; not in this config: {skipped}" if skipped else ""))
EOF
if [ -n "${GLAM_SMOKE_CKPT:-}" ]; then
    log "checkpoint: $GLAM_SMOKE_CKPT"
    cp "$GLAM_SMOKE_CKPT" "$BUNDLE/models/model.pt" || { fail "copying GLAM_SMOKE_CKPT"; exit 1; }
else
    log "checkpoint: a randomly initialised GLAM at the demo sizes -> $BUNDLE/models/model.pt"
    (cd "$WORK" && "$PY" - "$BUNDLE" <<'EOF') || fail "writing a random checkpoint from the bundle's network_def"
import os, sys
import torch
from monai.bundle import ConfigParser
bundle = sys.argv[1]
sys.path.insert(0, bundle)
parser = ConfigParser()
parser.read_config(os.path.join(bundle, "configs", "inference.json"))
parser["bundle_root"] = bundle
torch.manual_seed(0)
net = parser.get_parsed_content("network_def")
torch.save(net.state_dict(), os.path.join(bundle, "models", "model.pt"))
print(f"   {type(net).__name__}: {sum(p.numel() for p in net.parameters())} parameters")
EOF
fi

# ---------------------------------------------------------------------------------------------------- 3. studies
STUDIES="$WORK/studies"
PHANTOMS="$WORK/phantoms"
read -r H W < <("$PY" -c "import json, sys; print(*json.load(open(sys.argv[1]))['image_size'])" "$REPO/configs/presets/demo.json")
log "$N_IMAGES phantoms at ${H}x${W} -> $STUDIES (labels/final: lesion masks as 0 background, 1 benign, 2 malignant)"
"$PY" "$REPO/scripts/make_phantoms.py" --out_dir "$PHANTOMS" --n_images "$N_IMAGES" --height "$H" --width "$W" \
    --seed 0 --benign 0.5 --malignant 0.5 --lesion_scale benign=2 malignant=4 --contrast_scale 1.5 \
    --calcification_mask cluster --max_attempts 20 | tail -n 1 || { fail "make_phantoms.py"; exit 1; }
# writes $WORK/case.env: the case to infer (a left breast with a lesion, so that the flip must be undone) and its
# left-right mirror image (a right breast, named so), which reaches the network as the same model-frame image
"$PY" - "$PHANTOMS" "$STUDIES" "$WORK/case.env" <<'EOF' || { fail "building the studies folder"; exit 1; }
import json, os, shutil, sys
import numpy as np
from PIL import Image
phantoms, studies, case_env = sys.argv[1:]
final = os.path.join(studies, "labels", "final")
os.makedirs(final, exist_ok=True)
with open(os.path.join(phantoms, "datalist.json")) as f:
    items = [it for split in json.load(f).values() for it in split]
cases = []
for it in items:
    image = os.path.join(phantoms, it["image"])
    name = os.path.basename(image)
    shutil.copy(image, os.path.join(studies, name))
    h, w = np.array(Image.open(image)).shape[:2]
    label = np.zeros((h, w), np.uint8)
    masks = []
    for value, cls in ((1, "benign"), (2, "malignant")):
        if it.get(f"mask_{cls}"):
            path = os.path.join(phantoms, it[f"mask_{cls}"])
            label[np.array(Image.open(path)) > 0] = value
            masks.append(f"{cls}={path}")
    Image.fromarray(label).save(os.path.join(final, name))
    cases.append((it.get("laterality") != "L", not masks, name, masks))
cases.sort()  # left breasts with a lesion first
_, _, name, masks = cases[0]
side = {"_L-": "_R-", "_R-": "_L-"}
mirror = "mirror_" + next((name.replace(a, b) for a, b in side.items() if a in name), name)
Image.fromarray(np.ascontiguousarray(np.fliplr(np.array(Image.open(os.path.join(studies, name)))))).save(
    os.path.join(studies, mirror))
with open(case_env, "w") as f:
    f.write(f"CASE_ID={os.path.splitext(name)[0]}\nCASE_IMAGE={os.path.join(studies, name)}\n")
    f.write(f"CASE_MASKS=\"{' '.join('--mask ' + m for m in masks)}\"\n")
    f.write(f"MIRROR_ID={os.path.splitext(mirror)[0]}\nMIRROR_IMAGE={os.path.join(studies, mirror)}\n")
print(f"   {len(items)} studies; inference case {name} ({', '.join(m.split('=')[0] for m in masks) or 'no lesion'})")
EOF
# shellcheck disable=SC1091
source "$WORK/case.env"

# ---------------------------------------------------------------------------------------------------- 4. server
PORT="${GLAM_SMOKE_PORT:-$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")}"
URL="http://127.0.0.1:$PORT"
log "monailabel start_server on $URL (log: $WORK/server.log)"
# `python -m monailabel.main` is what the `monailabel` launcher runs; the launcher itself would use the python
# first on PATH and put the venv's parent folder on PYTHONPATH. setsid: the server leads its own process group, so
# that the trap stops it and the training subprocesses it starts.
MONAI_LABEL_TRACKING_ENABLED=false HF_HUB_OFFLINE=1 setsid "$PY" -m monailabel.main start_server \
    --app "$APP" --studies "$STUDIES" --host 127.0.0.1 --port "$PORT" \
    --conf models "$MODEL" --conf zoo_source ngc --conf sam2 false --conf preload false \
    >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

INFO=""
for _ in $(seq 1 300); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        break
    fi
    if INFO="$(curl -sf --max-time 5 "$URL/info/")"; then
        break
    fi
    INFO=""
    sleep 1
done
if [ -z "$INFO" ]; then
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        fail "the server did not answer GET /info within 300 s"
    else
        fail "the server exited before answering GET /info"
    fi
    tail -n 15 "$WORK/server.log" | sed 's/^/   | /'
    exit 1
fi
log "GET /info"
echo "$INFO" > "$WORK/info.json"
"$PY" - "$WORK/info.json" "$MODEL" "${GLAM_SMOKE_THRESHOLD_KEY:-}" > "$WORK/info.env" <<'EOF'
import json, sys
info, model, key = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
m = info.get("models", {}).get(model)
t = info.get("trainers", {}).get(model)
print(f"MODEL_LISTED={1 if m else 0}", f"TRAINER_LISTED={1 if t else 0}", sep="\n")
if m:
    print(f"# infer: type {m.get('type')}, labels {m.get('labels')}, dimension {m.get('dimension')}, "
          f"config {m.get('config')}", file=sys.stderr)
    config = m.get("config") or {}
    keys = [key] if key else [k for k in config if "threshold" in k.lower()]
    print(f"THRESHOLD_KEY={keys[0] if len(keys) == 1 and keys[0] in config else ''}")
if t:
    print(f"# train: config {t.get('config')}", file=sys.stderr)
EOF
# shellcheck disable=SC1091
source "$WORK/info.env"
[ "${MODEL_LISTED:-0}" = 1 ] || fail "/info does not list the model $MODEL"
[ "${TRAINER_LISTED:-0}" = 1 ] || fail "/info does not list a trainer for $MODEL"

# ---------------------------------------------------------------------------------------------------- 5. infer
infer() {  # infer IMAGE_ID OUT_FILE PARAMS_JSON: POST /infer, the label file into OUT_FILE; 0 on HTTP 200
    local id="$1" out="$2" params="$3" code
    code="$(curl -s --max-time 600 -o "$out" -w '%{http_code}' -X POST \
        "$URL/infer/$MODEL?image=$id&output=image" -F "params=$params")"
    if [ "$code" != 200 ]; then
        echo "   HTTP $code: $(head -c 600 "$out")"
        sleep 1  # the server logs the traceback after it answers
        echo "   server log (the exception):"
        grep -E "(Error|Exception)(:|$)" "$WORK/server.log" | grep -v "\[INFO\]" | tail -n 4 | sed 's/^/   | /'
        return 1
    fi
}
log "POST /infer/$MODEL?image=$CASE_ID (the label at the bundle's default threshold)"
if infer "$CASE_ID" "$WORK/label.png" '{"device": "cpu"}'; then
    # shellcheck disable=SC2086
    "$PY" "$REPO/scripts/monailabel_check_label.py" --label "$WORK/label.png" --image "$CASE_IMAGE" $CASE_MASKS \
        ${GLAM_SMOKE_CKPT:+--require_lesions} || fail "the returned label (default threshold) fails its checks"
    log "POST /infer/$MODEL?image=$MIRROR_ID (its left-right mirror image)"
    if infer "$MIRROR_ID" "$WORK/label_mirror.png" '{"device": "cpu"}'; then
        "$PY" "$REPO/scripts/monailabel_check_label.py" --label "$WORK/label_mirror.png" --image "$MIRROR_IMAGE" \
            --mirror_of "$WORK/label.png" || fail "the label of the mirror image is not the mirror of the label"
    else
        fail "POST /infer/$MODEL?image=$MIRROR_ID"
    fi
else
    fail "POST /infer/$MODEL"
fi
if [ -n "${THRESHOLD_KEY:-}" ]; then
    log "POST /infer/$MODEL?image=$CASE_ID with $THRESHOLD_KEY 0: every pixel with a saliency gets a class"
    if infer "$CASE_ID" "$WORK/label_all.png" "{\"device\": \"cpu\", \"$THRESHOLD_KEY\": 0.0}"; then
        # shellcheck disable=SC2086
        "$PY" "$REPO/scripts/monailabel_check_label.py" --label "$WORK/label_all.png" --image "$CASE_IMAGE" \
            --all_breast || fail "the returned label (threshold 0) does not cover the breast of the original image"
    else
        fail "POST /infer/$MODEL with $THRESHOLD_KEY 0"
    fi
else
    fail "no label threshold among the model's displayable configs in /info (GLAM_SMOKE_THRESHOLD_KEY names it)"
fi

# ---------------------------------------------------------------------------------------------------- 6. train
log "POST /train/$MODEL (max_epochs 1; datastore: $N_IMAGES images with final labels)"
CODE="$(curl -s --max-time 60 -o "$WORK/train_post.json" -w '%{http_code}' -X POST "$URL/train/$MODEL" \
    -H 'Content-Type: application/json' \
    -d '{"max_epochs": 1, "val_split": 0.25, "device": "cpu", "multi_gpu": false, "pretrained": true}')"
if [ "$CODE" != 200 ]; then
    fail "POST /train/$MODEL: HTTP $CODE $(head -c 400 "$WORK/train_post.json")"
else
    STATUS=""
    T0=$(date +%s)
    while [ $(( $(date +%s) - T0 )) -lt "$TRAIN_TIMEOUT" ]; do
        sleep 5
        curl -s --max-time 10 "$URL/train/" > "$WORK/train_status.json" || continue
        STATUS="$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1])).get('status', ''))" "$WORK/train_status.json" 2>/dev/null)"
        case "$STATUS" in DONE|ERROR|STOPPED) break ;; esac
    done
    log "training: ${STATUS:-no status} after $(( $(date +%s) - T0 )) s"
    if [ "$STATUS" != DONE ]; then
        "$PY" -c "import json, sys; [print('   |', l) for l in json.load(open(sys.argv[1])).get('details', [])]" \
            "$WORK/train_status.json" 2>/dev/null
        fail "the one-epoch training run ended ${STATUS:-without a status within ${TRAIN_TIMEOUT} s}"
    else
        ls -l "$BUNDLE/models" | sed 's/^/   /'
    fi
fi

# ---------------------------------------------------------------------------------------------------- summary
echo
if [ "${#FAILED[@]}" -eq 0 ]; then
    log "monailabel smoke: passed"
    exit 0
fi
log "monailabel smoke: ${#FAILED[@]} failure(s):"
printf '  - %s\n' "${FAILED[@]}"
exit 1
