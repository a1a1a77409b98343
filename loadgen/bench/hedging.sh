#!/usr/bin/env bash
# Hedging off vs adaptive vs tower's hedge middleware (the baseline), measured
# in one run, variants alternating.
#
# A cluster of real processes on loopback over BEIR SciFact: SHARDS x REPLICAS
# leaves with a seeded fault (default: a 1 ms latency body and 1% stragglers
# at 10x), an embedded merge, and a root restarted per variant with
# `--hedge off`, `--hedge adaptive` or `--hedge tower` (the leaves stay up, so
# every variant sees the same replicas; tower hedges only after its first
# 1 s period, which the warm-up covers). `fanout loadgen run` drives an open-loop load and
# writes a JSON report per run; the script prints p50/p99/p99.9 per variant,
# the ratios, and the extra leaf calls (hedges + retries per primary call).
#
# Usage: loadgen/bench/hedging.sh [OUT_DIR]
# Environment: SHARDS (8), REPLICAS (3), RATE (100 req/s), DURATION (20s),
#   WARMUP (3s), ROUNDS (2), FAULT ("latency=1ms straggler=0.01x10"),
#   HEDGES ("off adaptive tower"), BIN.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

SHARDS=${SHARDS:-8}
REPLICAS=${REPLICAS:-3}
RATE=${RATE:-100}
DURATION=${DURATION:-20s}
WARMUP=${WARMUP:-3s}
ROUNDS=${ROUNDS:-2}
FAULT=${FAULT:-"latency=1ms straggler=0.01x10"}
HEDGES=${HEDGES:-"off adaptive tower"}
OUT=${1:-target/bench-hedging}
BIN=${BIN:-target/release/fanout}

if [[ ! -x $BIN ]]; then
    echo "==> building $BIN"
    cargo build --release -p fanout
fi
mkdir -p "$OUT"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# Starts `fanout ARGS...` in the background; sets ADDR to the address it
# announces and LAST_PID to its pid (no subshell, so `pids` keeps every child).
start() {
    local log=$1
    shift
    local fifo
    fifo=$(mktemp -u)
    mkfifo "$fifo"
    "$BIN" "$@" >"$fifo" 2>"$log.stderr" &
    LAST_PID=$!
    pids+=("$LAST_PID")
    exec 3<"$fifo"
    rm -f "$fifo"
    ADDR=
    local line
    while read -r line <&3; do
        if [[ $line == "fanout "*" listening on "* ]]; then
            ADDR=${line##* }
            break
        fi
    done
    if [[ -z $ADDR ]]; then
        echo "fanout $* did not announce an address; see $log.stderr" >&2
        exit 1
    fi
    # Keep draining stdout so the child never blocks on a full pipe.
    cat <&3 >"$log.stdout" &
    pids+=($!)
    exec 3<&-
}

index="$OUT/index-$SHARDS"
if [[ ! -f $index/index.json ]]; then
    echo "==> indexing SciFact into $SHARDS shards"
    rm -rf "$index"
    "$BIN" index --input data/beir-scifact/corpus.jsonl.gz --id-field _id \
        --shards "$SHARDS" --out "$index" --no-progress >/dev/null
fi

fault_flags=()
for spec in $FAULT; do fault_flags+=(--fault "$spec"); done

echo "==> starting $SHARDS x $REPLICAS leaves with faults: $FAULT"
shard_flags=()
for ((shard = 0; shard < SHARDS; shard++)); do
    addrs=()
    for ((replica = 0; replica < REPLICAS; replica++)); do
        start "$OUT/leaf-$shard-$replica" leaf --shard-dir "$index/shard-$shard" \
            --search-threads 1 "${fault_flags[@]}" --fault "seed=$((shard * 100 + replica))"
        addrs+=("$ADDR")
    done
    shard_flags+=(--shard "$shard=$(IFS=,; echo "${addrs[*]}")")
done

for ((round = 0; round < ROUNDS; round++)); do
    for hedge in $HEDGES; do
        start "$OUT/root-$hedge-$round" root --listen 127.0.0.1:0 --hedge "$hedge" "${shard_flags[@]}"
        root=$ADDR
        root_pid=$LAST_PID
        echo "==> round $round, hedge $hedge: $RATE req/s for $DURATION"
        "$BIN" loadgen run --target search --addr "http://$root" --rate "$RATE" \
            --duration "$DURATION" --warmup "$WARMUP" --arrivals poisson --seed "$round" \
            --queries data/beir-scifact/queries.jsonl --no-progress \
            --label "hedge $hedge" --json "$OUT/hedge-$hedge-$round.json" >"$OUT/hedge-$hedge-$round.txt"
        kill "$root_pid"
        wait "$root_pid" 2>/dev/null || true
    done
done

python3 - "$OUT" "$ROUNDS" "$SHARDS" $HEDGES <<'PY'
import json, sys
out, rounds, shards = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = {}
for hedge in sys.argv[4:]:
    reports = [json.load(open(f"{out}/hedge-{hedge}-{r}.json")) for r in range(rounds)]
    def median(key):
        values = sorted(report["latency"][key] for report in reports)
        return values[len(values) // 2]
    count = sum(r["count"] for r in reports)
    errors = sum(r["errors"] for r in reports)
    extra = sum(r["coverage"].get("hedges", 0) + r["coverage"].get("retries", 0) for r in reports)
    rows[hedge] = dict(p50=median("p50_us"), p99=median("p99_us"), p999=median("p99_9_us"),
                       count=count, errors=errors, extra=extra)
print(f"{'hedge':<10}{'p50':>10}{'p99':>10}{'p99.9':>10}{'requests':>10}{'errors':>8}{'hedges+retries':>16}")
for hedge, row in rows.items():
    print(f"{hedge:<10}{row['p50']/1000:>8.2f}ms{row['p99']/1000:>8.2f}ms{row['p999']/1000:>8.2f}ms"
          f"{row['count']:>10}{row['errors']:>8}{row['extra']:>16}")
off = rows.get("off")
for hedge, on in rows.items():
    if hedge == "off":
        continue
    if off:
        print(f"{hedge}: p99 off/{hedge} {off['p99']/on['p99']:.2f}x, "
              f"p99.9 {off['p999']/on['p999']:.2f}x, p50 {hedge}/off {on['p50']/off['p50']:.3f}")
    print(f"{hedge}: extra phase-one leaf calls (hedges + retries per primary call): "
          f"{100 * on['extra'] / max(on['count'] * shards, 1):.2f}%")
PY
