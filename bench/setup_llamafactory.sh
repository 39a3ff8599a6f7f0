#!/usr/bin/env bash
# LLaMA-Factory in its own environment (it pins its own transformers/peft versions).
set -euo pipefail
cd "$(dirname "$0")"
env=.envs/llamafactory
[ -x "$env/bin/llamafactory-cli" ] && exit 0
python3 -m venv "$env"
# LLaMA-Factory imports torchaudio, which has no CPU build here and is built against one CUDA
# version: pin the torch / torchvision / torchaudio trio that agree (it runs on the CPU).
"$env/bin/pip" install --quiet torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0
"$env/bin/pip" install --quiet "llamafactory==${LLAMAFACTORY_VERSION:-0.9.5}" \
  torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0
