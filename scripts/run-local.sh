#!/usr/bin/env bash
# A working local set-up in the foreground: one server and two workers on
# localhost:3821. Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.venv/bin"
ADDRESS="${JOBQUEUE_SERVER:-localhost:3821}"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
"$BIN/jobqueue-server" "$ADDRESS" & pids+=($!)
"$BIN/jobqueue-worker" "$ADDRESS" --name local-1 & pids+=($!)
"$BIN/jobqueue-worker" "$ADDRESS" --name local-2 & pids+=($!)
cat <<MSG

jobqueue is running: a server on $ADDRESS and two workers (local-1, local-2).
In another terminal:
    export PATH="$BIN:\$PATH"
    jq echo hello from a worker
    jobqueue status
Ctrl-C here stops the server and the workers.

MSG
wait
