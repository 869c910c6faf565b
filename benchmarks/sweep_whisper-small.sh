#!/bin/sh
# The same grid as sweep_whisper-base.sh on whisper-small (the study's model), wherever its weights
# are at hand: MODEL is a hub id (needs the Hugging Face hub) or a local transformers folder. Every
# shipped recipe (fp16 left out: meant for CUDA) and a mixed-precision `auto` bundle at AUTO_MB
# (default 150 MB, ~16 % of fp32's 967 MB, as 45 MB is of whisper-base's 290 MB) are built and
# benched on speech-dev's LibriSpeech utterances, clean and with babble at 10 dB SNR; static
# recipes and the auto scan calibrate on speech-dev's other clips. Pass `-d librispeech:test-clean
# -d librispeech:test-other` (after the script's name) for the study's own sets. Results are copied
# into benchmarks/results/sweep_whisper-small/; the README's table stays whisper-base's.
#
#     MODEL=path/to/whisper-small sh benchmarks/sweep_whisper-small.sh [more edgeq sweep options]
#
# Not run here: whisper-small weights are not available on the machines this was written on.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
AUTO_MB=${AUTO_MB:-150}
NAME=whisper-small MODEL=${MODEL:-openai/whisper-small} AUTO_MB=$AUTO_MB \
  OUT=${OUT:-/tmp/edgeq-sweep/whisper-small} AUTO=${AUTO:-/tmp/edgeq-sweep/whisper-small-auto-${AUTO_MB}MB} \
  exec sh "$HERE/_sweep.sh" "$@"
