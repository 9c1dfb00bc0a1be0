#!/usr/bin/env bash
# Swap the model on a Raspberry Pi running fer-edge, atomically, and restart the service.
#
#   deploy/deploy-model.sh PI=pi@raspberrypi.local [--model models/fer_int8.tflite] [ssh options]
#
# The .tflite and its .json go to a temporary folder beside the models on the Pi; the copy is checked
# against the sha256 in the JSON, renamed to models/<sha256[:12]>/, and the `current` link is switched
# with one rename, so the service never sees a model without its matching sidecar. Then
# `fer-edge check-config` and a restart; if the service does not come up, the previous model is
# restored. Options as deploy/deploy.sh (--port, --identity, --ssh-option, --staging).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/deploy.sh" --model-only "$@"
