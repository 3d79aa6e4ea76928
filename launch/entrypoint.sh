#!/usr/bin/env bash
# Train CONFIG on the Ray cluster this node belongs to (ray up / KubeRay head), with every GPU the cluster has:
#   gandist-entrypoint CONFIG RUN_DIR [extra `gandist train` args, e.g. --set train.steps=1000]
# WORKERS and GPUS_PER_WORKER override the defaults (all GPUs in the cluster, one per worker).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: gandist-entrypoint CONFIG RUN_DIR [gandist train args...]" >&2
  exit 2
fi
config=$1 run_dir=$2
shift 2
gpus=$(python -c "import ray; ray.init(address='auto', logging_level='ERROR'); print(int(ray.cluster_resources().get('GPU', 0)))")
workers=${WORKERS:-$(( gpus > 0 ? gpus : 1 ))}
gpus_per_worker=${GPUS_PER_WORKER:-$(( gpus > 0 ? 1 : 0 ))}
echo "gandist: ${workers} Ray Train worker(s), ${gpus_per_worker} GPU(s) each, run dir ${run_dir}" >&2
exec gandist train "$config" --ray --address auto --workers "$workers" --gpus-per-worker "$gpus_per_worker" \
  --run-dir "$run_dir" "$@"
