#!/usr/bin/env bash
# LLaMA-Factory in its own environment (it pins its own transformers/peft versions).
set -euo pipefail
cd "$(dirname "$0")"
env=.envs/llamafactory
[ -x "$env/bin/llamafactory-cli" ] && exit 0
python3 -m venv "$env"
"$env/bin/pip" install --quiet torch==2.13.0
"$env/bin/pip" install --quiet "llamafactory==${LLAMAFACTORY_VERSION:-0.9.5}"
