#!/usr/bin/env bash
# The main job, run by `make demo`: build the synthetic audio-visual dataset, train the tiny
# Zorro on it, score it on held-out clips, export it into model_repository/ (the Triton
# repository), and serve it with the gateway on http://127.0.0.1:8080 until Ctrl-C.
# Each step is skipped when its output already exists, so a re-run only does what is missing.
# Sizes are tuned for 2 CPU cores (about 10 minutes before serving). AVSERVE_DEMO_SERVE=0
# stops after the export. AVSERVE_DEMO_MODELS="zorro_tiny mbt_tiny" also trains and serves MBT
# (with modality dropout, so its audio-only and video-only graphs are trained for); requests
# choose a family with ?model=mbt_tiny, and zorro_tiny stays the default.
set -euo pipefail
cd "$(dirname "$0")/.."
AVSERVE=.venv/bin/avserve
DATA="${AVSERVE_DEMO_DATA:-data/synth}"
MODELS="${AVSERVE_DEMO_MODELS:-zorro_tiny}"
EPOCHS="${AVSERVE_DEMO_EPOCHS:-30}"

if [[ ! -f "$DATA/manifest.csv" ]]; then
  "$AVSERVE" data synth --out "$DATA" --clips 600 --seed 0 --workers 2
fi
"$AVSERVE" data info "$DATA"

for model in $MODELS; do
  run="runs/$model"
  extra=()
  case "$model" in
    mbt*) extra=(--modality-dropout 0.3) ;;  # MBT has no modality-pure heads: train its unimodal routes
  esac
  if [[ ! -f "$run/best.pt" ]]; then
    "$AVSERVE" train --model "$model" --data "$DATA" --out "$run" --epochs "$EPOCHS" \
      --batch-size 16 --lr 1e-3 --workers 2 "${extra[@]}"
  fi
  "$AVSERVE" evaluate --checkpoint "$run" --data "$DATA" --split test
  "$AVSERVE" export --checkpoint "$run" --repository model_repository --name "$model"
done
export AVSERVE_DEFAULT_MODEL="${AVSERVE_DEFAULT_MODEL:-${MODELS%% *}}"
if [[ "${AVSERVE_DEMO_SERVE:-1}" == "1" ]]; then
  example=$(awk -F, 'NR > 1 && $3 == "test" && $6 == "audio+video" {print $1; exit}' "$DATA/manifest.csv")
  echo "demo: serving model_repository/ on http://127.0.0.1:8080 (Ctrl-C to stop). Try, from another shell:"
  echo "  .venv/bin/avserve classify $DATA/$example --url http://127.0.0.1:8080"
  exec "$AVSERVE" serve --repository model_repository --host 127.0.0.1 --port 8080
fi
