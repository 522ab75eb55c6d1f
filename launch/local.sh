#!/usr/bin/env bash
# Runs zsl_jax.main as N cooperating processes on this machine (a multi-host run in miniature).
#
#   launch/local.sh NUM_PROCESSES DEVICES_PER_PROCESS --config=configs/X.py:demo --workdir=W [...]
#
# DEVICES_PER_PROCESS > 0 simulates that many CPU devices per process (XLA host platform);
# 0 leaves the devices alone (e.g. one GPU per process: set CUDA_VISIBLE_DEVICES yourself).
# Each process logs to W/logs/process_<i>.log. If any process fails, the others are stopped and
# the script exits with that process's status.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS --config=... --workdir=... [--config.k=v ...]" >&2
  exit 2
fi
num_processes=$1
devices=$2
shift 2

workdir=""
for arg in "$@"; do
  case "$arg" in
    --workdir=*) workdir="${arg#--workdir=}" ;;
  esac
done
if [[ -z "$workdir" ]]; then
  echo "$0: --workdir=DIR is required (logs go to DIR/logs)" >&2
  exit 2
fi
mkdir -p "$workdir/logs"

port=${ZSL_JAX_COORDINATOR_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup INT TERM

for ((i = 0; i < num_processes; i++)); do
  env_flags=()
  if [[ "$devices" -gt 0 ]]; then
    env_flags=(XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$devices" JAX_PLATFORMS=cpu)
  fi
  env "${env_flags[@]}" python3 -m zsl_jax.main "$@" \
    --config.distributed.initialize=True \
    --config.distributed.coordinator_address="127.0.0.1:$port" \
    --config.distributed.num_processes="$num_processes" \
    --config.distributed.process_id="$i" \
    >"$workdir/logs/process_$i.log" 2>&1 &
  pids+=($!)
done

# Wait for the first process to finish; a failure stops the rest instead of leaving them
# blocked in a collective.
status=0
live=("${pids[@]}")
while [[ ${#live[@]} -gt 0 ]]; do
  set +e
  wait -n -p done_pid "${live[@]}"
  rc=$?
  set -e
  next=()
  for pid in "${live[@]}"; do [[ "$pid" != "$done_pid" ]] && next+=("$pid"); done
  live=("${next[@]+"${next[@]}"}")
  if [[ $rc -ne 0 && $status -eq 0 ]]; then
    status=$rc
    echo "$0: process with pid $done_pid exited with status $rc; stopping the others" >&2
    cleanup
  fi
done
for ((i = 0; i < num_processes; i++)); do
  echo "== process $i: $workdir/logs/process_$i.log"
  tail -n 3 "$workdir/logs/process_$i.log"
done
exit $status
