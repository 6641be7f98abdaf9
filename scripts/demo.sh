#!/usr/bin/env bash
# The main job, run by `make demo`: build the synthetic audio-visual dataset, train the tiny
# Zorro on it, score it on held-out clips, export it into model_repository/ (the Triton
# repository), and serve it with the gateway on http://127.0.0.1:8080 until Ctrl-C.
# Each step is skipped when its output already exists, so a re-run only does what is missing.
# Sizes are tuned for 2 CPU cores (about 10 minutes before serving). AVSERVE_DEMO_SERVE=0
# stops after the export.
set -euo pipefail
cd "$(dirname "$0")/.."
AVSERVE=.venv/bin/avserve
DATA="${AVSERVE_DEMO_DATA:-data/synth}"
RUN="${AVSERVE_DEMO_RUN:-runs/zorro_tiny}"
EPOCHS="${AVSERVE_DEMO_EPOCHS:-30}"

if [[ ! -f "$DATA/manifest.csv" ]]; then
  "$AVSERVE" data synth --out "$DATA" --clips 600 --seed 0 --workers 2
fi
"$AVSERVE" data info "$DATA"

if [[ ! -f "$RUN/best.pt" ]]; then
  "$AVSERVE" train --model zorro_tiny --data "$DATA" --out "$RUN" --epochs "$EPOCHS" \
    --batch-size 16 --lr 1e-3 --workers 2
fi
"$AVSERVE" evaluate --checkpoint "$RUN" --data "$DATA" --split test
"$AVSERVE" export --checkpoint "$RUN" --repository model_repository --name zorro_tiny
if [[ "${AVSERVE_DEMO_SERVE:-1}" == "1" ]]; then
  example=$(awk -F, 'NR > 1 && $3 == "test" && $6 == "audio+video" {print $1; exit}' "$DATA/manifest.csv")
  echo "demo: serving model_repository/ on http://127.0.0.1:8080 (Ctrl-C to stop). Try, from another shell:"
  echo "  .venv/bin/avserve classify $DATA/$example --url http://127.0.0.1:8080"
  exec "$AVSERVE" serve --repository model_repository --host 127.0.0.1 --port 8080
fi
