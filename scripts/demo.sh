#!/usr/bin/env bash
# The main job, run by `make demo`. It grows with the project: today it builds the synthetic
# audio-visual dataset and trains the tiny Zorro on it. Later issues add export to
# model_repository/ and `avserve serve` on top.
set -euo pipefail
cd "$(dirname "$0")/.."
AVSERVE=.venv/bin/avserve
DATA="${AVSERVE_DEMO_DATA:-data/synth}"
RUN="${AVSERVE_DEMO_RUN:-runs/zorro_tiny}"

if [[ ! -f "$DATA/manifest.csv" ]]; then
  "$AVSERVE" data synth --out "$DATA" --clips 480 --seed 0 --workers 2
fi
"$AVSERVE" data info "$DATA"
if [[ -x "$(command -v .venv/bin/avserve)" ]] && "$AVSERVE" --help | grep -q " train "; then
  "$AVSERVE" train --model zorro_tiny --data "$DATA" --out "$RUN" --epochs "${AVSERVE_DEMO_EPOCHS:-12}" --workers 2
fi
