#!/bin/sh
# The README's recipes table and plots in one command: the study's grid on whisper-base and
# speech-dev. Every shipped recipe (fp16 left out: meant for CUDA) and a mixed-precision `auto`
# bundle at 45 MB are built and benched on the 8 LibriSpeech utterances of speech-dev, clean and
# with babble noise at 10 dB SNR (the "harder set": test-other is not here). Static recipes and
# the auto scan calibrate on speech-dev's other clips, never the test set. A re-run only does what
# is missing (cache under $OUT); then the results files and plots are copied into
# benchmarks/results/sweep_whisper-base/ and the README's table is regenerated from them.
#
#     sh benchmarks/sweep_whisper-base.sh [more edgeq sweep options]
#
# Needs an otherwise idle CPU: the latency and RSS columns are measured here (~45 min on 2 cores).
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${EDGEQ_SHARED:-$REPO/../shared}
OUT=${OUT:-/tmp/edgeq-sweep/whisper-base}
AUTO=${AUTO:-/tmp/edgeq-sweep/auto-45MB}
MODEL="$SHARED/models/whisper-base"
CALIBRATION="$SHARED/data/speech-dev/other"
if [ ! -f "$AUTO/recipe.toml" ]; then
  edgeq build --recipe auto --max-size 45 --calibration "$CALIBRATION" -m "$MODEL" --language en -o "$AUTO"
fi
edgeq sweep --recipes "${RECIPES:-all},$AUTO/recipe.toml" --skip-fp16 \
  -m "$MODEL" -d "speech-dev=$SHARED/data/speech-dev/LibriSpeech" \
  --noise 10 --noise-source babble \
  --calibration "$CALIBRATION" --threads 2 --language en -o "$OUT" "$@"
DEST="$REPO/benchmarks/results/sweep_whisper-base"
rm -rf "$DEST" && mkdir -p "$DEST/plots"
cp "$OUT/results.json" "$OUT/results.csv" "$OUT/results.md" "$OUT/report.md" "$DEST/"
cp "$OUT"/plots/*.png "$DEST/plots/"
python "$REPO/benchmarks/tables.py" --readme
echo "results: $DEST (README table regenerated)"
