#!/usr/bin/env bash
# Serve an exported model with TensorFlow Serving: gRPC on port 8500, REST on port 8501.
#
#   scripts/serve_tf_serving.sh saved_models/resnet20          # the model base path (integer versions inside)
#   MODEL_NAME=cifar REST_PORT=9001 scripts/serve_tf_serving.sh saved_models/resnet20
#   scripts/serve_tf_serving.sh --dry-run saved_models/resnet20   # print the command only
#
# TF Serving loads the highest integer version under the base path and polls it for new ones
# (`resnet-keras export` renames a finished version into place, so it never sees half a model).
# It uses the local `tensorflow_model_server` binary when there is one (Debian/Ubuntu package
# `tensorflow-model-server` from TF Serving's apt repository), else the `tensorflow/serving`
# Docker image. Then: python scripts/rest_client.py --model <name> image.jpg
set -euo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
  dry_run=1
  shift
fi
if [[ $# -ne 1 ]]; then
  echo "usage: $0 [--dry-run] MODEL_BASE_PATH   (e.g. saved_models/resnet20)" >&2
  exit 2
fi
if [[ ! -d "$1" ]]; then
  echo "Error: model base path not found: $1" >&2
  exit 2
fi
base=$(cd "$1" && pwd)
if ! ls "$base" | grep -qE '^[0-9]+$'; then
  echo "Error: $base has no integer version folder; run: resnet-keras export --model-dir RUN" >&2
  exit 2
fi
name=${MODEL_NAME:-$(basename "$base")}
grpc_port=${GRPC_PORT:-8500}
rest_port=${REST_PORT:-8501}

if command -v tensorflow_model_server >/dev/null 2>&1; then
  cmd=(tensorflow_model_server --port="$grpc_port" --rest_api_port="$rest_port"
       --model_name="$name" --model_base_path="$base" --file_system_poll_wait_seconds=5)
else
  cmd=(docker run --rm -p "$grpc_port:8500" -p "$rest_port:8501"
       --mount "type=bind,source=$base,target=/models/$name,readonly"
       -e "MODEL_NAME=$name" tensorflow/serving)
fi

if [[ $dry_run == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
