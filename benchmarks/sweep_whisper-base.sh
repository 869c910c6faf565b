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
HERE=$(cd "$(dirname "$0")" && pwd)
SHARED=${EDGEQ_SHARED:-$(cd "$HERE/.." && pwd)/../shared}  # as _sweep.sh finds it
NAME=whisper-base MODEL="$SHARED/models/whisper-base" AUTO_MB=45 README=1 \
  OUT=${OUT:-/tmp/edgeq-sweep/whisper-base} AUTO=${AUTO:-/tmp/edgeq-sweep/auto-45MB} \
  exec sh "$HERE/_sweep.sh" "$@"
