#!/usr/bin/env bash
# The engine beside its peer, on this machine, in one run: Bot Framework JS
# (../shared/bench/peer-botbuilder: the same support scenario, in process) and
# flowbot's engine (benches/engine.rs), at 1,000 and 10,000 conversations; prints
# both and the ratio, and fails when flowbot is under 200x the peer.
#   scripts/peer.sh            the figures for BENCHMARKS.md
#   scripts/peer.sh --smoke    100 conversations: checks that both run (CI)
# PEER_DIR names the peer's folder when it is elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=(1000 10000)
min_ratio=200
if [ "${1:-}" = "--smoke" ]; then sizes=(100); min_ratio=0; fi
# Without the goal (figures to record even when it is missed): --no-goal.
if [ "${1:-}" = "--no-goal" ]; then min_ratio=0; fi

peer=""
for d in "${PEER_DIR:-}" ../shared/bench/peer-botbuilder /work/shared/bench/peer-botbuilder; do
  if [ -n "$d" ] && [ -f "$d/bench.js" ]; then peer=$d; break; fi
done
if [ -z "$peer" ]; then
  echo "peer: no peer-botbuilder folder (set PEER_DIR); skipped"
  exit 0
fi
# The peer is installed in a copy of its own, under target/, never in place.
work=target/peer-botbuilder
mkdir -p "$work"
cp "$peer/bench.js" "$peer/package.json" "$peer/package-lock.json" "$work/"
if [ ! -d "$work/node_modules/botbuilder" ]; then
  (cd "$work" && npm install --ignore-scripts --no-audit --no-fund --silent)
fi

# The release profile (the bench profile's settings under its own name, which
# would build the crate once more after a release build).
cargo bench -q --profile release --bench engine --no-run
for n in "${sizes[@]}"; do
  p=$(cd "$work" && node bench.js "$n")
  e=$(FLOWBOT_BENCH_QUICK=$n cargo bench -q --profile release --bench engine 2>/dev/null | grep '^{')
  pt=$(sed 's/.*"turns_per_sec":\([0-9]*\).*/\1/' <<<"$p")
  et=$(sed 's/.*"turns_per_sec":\([0-9]*\).*/\1/' <<<"$e")
  ratio=$(( et / (pt > 0 ? pt : 1) ))
  echo "$n conversations: peer $pt turns/s, flowbot $et turns/s: ${ratio}x"
  echo "  peer:    $p"
  echo "  flowbot: $e"
  if [ "$pt" -le 0 ] || [ "$et" -le 0 ]; then echo "a bench gave no figure"; exit 1; fi
  if [ "$ratio" -lt "$min_ratio" ]; then echo "flowbot is under ${min_ratio}x its peer"; exit 1; fi
done
