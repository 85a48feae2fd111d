#!/usr/bin/env bash
# Entry point of the carla-td3 image. The first argument picks the role:
#   head                 the Ray head (GCS, dashboard on 8265, client server on 10001, no CPUs)
#   worker [RAY_ARGS..]  a Ray worker node joining $RAY_HEAD_ADDRESS (e.g. --num-gpus=1)
#   train [ARGS..]       joins as a node without CPUs, then `carla-td3 train --ray-address auto`
#   wait-carla [ARGS..]  blocks until every CARLA server serves its world (healthcheck.py carla)
#   anything else        runs as a command (e.g. bash, carla-td3 evaluate ...)
# Ray's token auth: RAY_AUTH_MODE=token with RAY_AUTH_TOKEN from the environment, never the image.
set -euo pipefail

require_token() {
  if [[ "${RAY_AUTH_MODE:-}" == "disabled" ]]; then
    echo "entrypoint: warning: event=ray_auth_disabled role=${role} detail=\"Ray's ports on the" \
         "compose network, and the dashboard on 8265, accept anyone who reaches them\"" >&2
  elif [[ -z "${RAY_AUTH_TOKEN:-}" ]]; then
    echo "entrypoint: error: RAY_AUTH_TOKEN is empty; set it in the environment or set RAY_AUTH_MODE=disabled" >&2
    exit 64
  fi
}

metrics_port="${RAY_METRICS_EXPORT_PORT:-8080}"
head_address="${RAY_HEAD_ADDRESS:-ray-head:6379}"
role="${1:-}"
[[ $# -gt 0 ]] && shift

case "${role}" in
  head)
    require_token
    exec ray start --head --block --disable-usage-stats \
      --port=6379 --dashboard-host=0.0.0.0 --dashboard-port=8265 \
      --ray-client-server-port=10001 --metrics-export-port="${metrics_port}" \
      --num-cpus=0 --num-gpus=0 "$@"
    ;;
  worker)
    require_token
    exec ray start --address="${head_address}" --block --disable-usage-stats \
      --metrics-export-port="${metrics_port}" --dashboard-agent-listen-port=52365 "$@"
    ;;
  train)
    require_token
    ray start --address="${head_address}" --disable-usage-stats \
      --metrics-export-port="${metrics_port}" --num-cpus=0 --num-gpus=0
    # Not exec: this node's Ray processes are stopped after the run. SIGTERM (docker compose
    # stop) is passed on to the trainer, which stops as on Ctrl+C: a final checkpoint, and
    # the CARLA servers back in asynchronous mode; `wait` returns at the signal, so it waits
    # again until the trainer has exited.
    carla-td3 train --ray-address auto "$@" &
    child=$!
    trap 'kill -TERM "${child}" 2>/dev/null' TERM INT
    status=0
    wait "${child}" || status=$?
    while kill -0 "${child}" 2>/dev/null; do
      status=0
      wait "${child}" || status=$?
    done
    ray stop
    exit "${status}"
    ;;
  wait-carla)
    exec carla-td3-healthcheck carla "$@"
    ;;
  "")
    echo "entrypoint: error: no role; use head, worker, train, wait-carla or a command" >&2
    exit 64
    ;;
  *)
    exec "${role}" "$@"
    ;;
esac
