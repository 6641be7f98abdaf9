#!/usr/bin/env bash
# The main job, run by `make demo`: build the synthetic audio-visual dataset, train the tiny
# Zorro on it, score it on held-out clips, and export it into model_repository/ (the Triton
# repository the gateway serves). Each step is skipped when its output already exists, so a
# re-run only does what is missing. Sizes are tuned for 2 CPU cores (about 10 minutes).
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
echo "demo: model_repository/ is ready (serve it with: .venv/bin/avserve triton --repository model_repository)"
