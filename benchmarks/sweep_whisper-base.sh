#!/bin/sh
# The study's grid on whisper-base and speech-dev in one command: every shipped recipe (fp16 left
# out: meant for CUDA) built and benched on the 8 LibriSpeech utterances of speech-dev, static
# recipes calibrated on speech-dev's other clips (never the test set), plus the mixed-precision
# auto bundle if one was built (see the README's "Sweep" section). A re-run only does what is
# missing; the bundles and per-utterance results live under $OUT, the table, plots and report too.
#
#     sh benchmarks/sweep_whisper-base.sh [more edgeq sweep options, e.g. --noise 10]
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${EDGEQ_SHARED:-$REPO/../shared}
OUT=${OUT:-/tmp/edgeq-sweep/whisper-base}
RECIPES=${RECIPES:-all}
if [ -f "${AUTO:-/tmp/edgeq-sweep/auto-60MB}/recipe.toml" ]; then
  RECIPES="$RECIPES,${AUTO:-/tmp/edgeq-sweep/auto-60MB}/recipe.toml"
fi
exec edgeq sweep --recipes "$RECIPES" --skip-fp16 \
  -m "$SHARED/models/whisper-base" \
  -d "speech-dev=$SHARED/data/speech-dev/LibriSpeech" \
  --calibration "$SHARED/data/speech-dev/other" \
  --threads 2 --language en -o "$OUT" "$@"
