#!/bin/sh
# The body of sweep_whisper-base.sh and sweep_whisper-small.sh (run one of those): the study's grid
# on speech-dev for the model they name. They set NAME (the results folder's suffix), MODEL, AUTO_MB
# (the mixed-precision bundle's budget), OUT (the sweep's cache), AUTO (that bundle's folder) and
# README=1 where the results are the README's own table.
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${EDGEQ_SHARED:-$REPO/../shared}
CALIBRATION="$SHARED/data/speech-dev/other"
if [ ! -f "$AUTO/recipe.toml" ]; then
  edgeq build --recipe auto --max-size "$AUTO_MB" --calibration "$CALIBRATION" -m "$MODEL" --language en -o "$AUTO"
fi
edgeq sweep --recipes "${RECIPES:-all},$AUTO/recipe.toml" --skip-fp16 \
  -m "$MODEL" -d "speech-dev=$SHARED/data/speech-dev/LibriSpeech" \
  --noise 10 --noise-source babble \
  --calibration "$CALIBRATION" --threads 2 --language en -o "$OUT" "$@"
DEST="$REPO/benchmarks/results/sweep_$NAME"
rm -rf "$DEST" && mkdir -p "$DEST/plots"
cp "$OUT/results.json" "$OUT/results.csv" "$OUT/results.md" "$OUT/report.md" "$DEST/"
cp "$OUT"/plots/*.png "$DEST/plots/"
if [ "${README:-0}" = 1 ]; then
  python "$REPO/benchmarks/tables.py" --readme
  echo "results: $DEST (README table regenerated)"
else
  echo "results: $DEST"
fi
