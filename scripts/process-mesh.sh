#!/usr/bin/env bash
# Runs the mesh as separate processes (release build) on loopback and measures
# one synthetic batch: throughput, and optionally a kill -9 of the coordinator
# and of a node mid-batch. Needs grpcurl and python3.
#   scripts/process-mesh.sh [messages] [memory|durable] [crash]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}; MODE=${2:-durable}; CRASH=${3:-}
PORT=${PORT:-50071}; ADDR=127.0.0.1:$PORT
# Crash runs use a slower gateway so the kills land mid-batch.
LATENCY=${LATENCY:-0ms}; [ -n "$CRASH" ] && LATENCY=${LATENCY/#0ms/20ms}
BIN=target/release
cargo build --release --quiet --workspace --bins
DATA=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$DATA"' EXIT
STORE=(--data-dir "$DATA"); [ "$MODE" = memory ] && STORE=(--in-memory)
start_coord() { RUST_LOG=warn $BIN/smscoord --listen $ADDR --insecure-no-auth --plaintext "${STORE[@]}" >/dev/null & COORD=$!; }
start_coord
for i in 1 2 3 4; do
  RUST_LOG=error $BIN/smsnode --coordinator http://$ADDR --name node-$i --concurrency 1000 \
    --mean-latency $LATENCY --reconnect-max 200ms & eval NODE$i=\$!
done
sleep 1
status() { grpcurl -plaintext -d "{\"batch_id\":\"$ID\"}" $ADDR smsmesh.v1.Coordinator/GetStatus 2>/dev/null; }
field() { python3 -c "import json,sys; b=json.load(sys.stdin)['batch']; print(b.get('$1',0))"; }
T0=$(date +%s.%N)
ID=$(grpcurl -plaintext -d "{\"synthetic\":{\"count\":$N,\"seed\":1}}" $ADDR smsmesh.v1.Coordinator/SubmitBatch | python3 -c 'import json,sys;print(json.load(sys.stdin)["batchId"])')
if [ -n "$CRASH" ]; then
  until [ "$(status | field sent)" -ge $((N * 3 / 10)) ] 2>/dev/null; do sleep 0.05; done
  kill -9 $NODE1; echo "kill -9 node-1 at sent=$(status | field sent)"
  sleep 0.5; echo "requeued after the node kill: $(status | field requeued)"
  until [ "$(status | field sent)" -ge $((N / 2)) ] 2>/dev/null; do sleep 0.05; done
  echo "kill -9 coordinator at sent=$(status | field sent)"; kill -9 $COORD; wait $COORD 2>/dev/null || true
  start_coord
fi
# One progress stream (smsmon exits when the batch ends), retried across the coordinator restart.
until $BIN/smsmon --coordinator http://$ADDR --batch "$ID" --plain --interval 200ms >/dev/null 2>&1; do sleep 0.05; done
T1=$(date +%s.%N)
status | python3 -c "
import json,sys
b=json.load(sys.stdin)['batch']; g=lambda k: int(b.get(k,0))
secs=$T1-$T0
print(f'$MODE (gateway latency $LATENCY): {g(\"total\")} messages in {secs:.2f}s = {g(\"total\")/secs:,.0f} msg/s (submit to last outcome)')
print(f'sent {g(\"sent\")} failed {g(\"failed\")} lost {g(\"total\")-g(\"sent\")-g(\"failed\")} requeued {g(\"requeued\")} resent {g(\"resent\")} duplicates {g(\"duplicates\")}')
"
