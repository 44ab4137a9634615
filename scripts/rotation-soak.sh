#!/usr/bin/env bash
# Key-rotation soak (root): RUNS labs of three nodes, each under three 1,000-datagram-per-second
# UDP sequence streams (n1→n2 IPv4, n2→n3 IPv6, n3→n1 IPv4) while every node rotates both keys
# ROUNDS times, all at once. Prints the datagrams lost per stream (with the runs of sequence
# numbers lost, when any) and exits 1 if any stream lost one.
#
#   scripts/rotation-soak.sh [RUNS] [ROUNDS]     (defaults: 10 runs of 10 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
rounds=${2:-10}
cargo build --quiet --bins
m=target/debug/meshctl
t=target/debug/lab-traffic
lost_any=0
for run in $(seq "$runs"); do
  lab="sk$(( $$ % 1000 ))r$run"
  out=$(mktemp -d)
  trap '"$m" lab down --name "$lab" >/dev/null 2>&1 || true; rm -rf "$out"' EXIT
  "$m" lab up --name "$lab" --nodes 3 --pods-per-node 1 >/dev/null 2>"$out/up" || { cat "$out/up"; exit 2; }
  addr() { "$m" lab status --name "$lab" -o json | python3 -c "
import json, sys
p = [p for p in json.load(sys.stdin)['pods'] if p['namespace'] == sys.argv[1]][0]
print(p['ipv' + sys.argv[2]].split('/')[0])" "$1" "$2"; }
  a1=$(addr "$lab-n1-p1" 4); a2=$(addr "$lab-n2-p1" 4); a3=$(addr "$lab-n3-p1" 6)
  ip netns exec "$lab-n2-p1" "$t" udp-sink --listen 0.0.0.0:6000 --duration-s 90 --idle-exit-s 3 >"$out/1" 2>/dev/null &
  ip netns exec "$lab-n3-p1" "$t" udp-sink --listen '[::]:6001' --duration-s 90 --idle-exit-s 3 >"$out/2" 2>/dev/null &
  ip netns exec "$lab-n1-p1" "$t" udp-sink --listen 0.0.0.0:6002 --duration-s 90 --idle-exit-s 3 >"$out/3" 2>/dev/null &
  sleep 0.5
  secs=$((rounds * 2 + 5))
  ip netns exec "$lab-n1-p1" "$t" udp-send --to "$a2:6000" --interval-ms 1 --duration-s "$secs" >/dev/null &
  ip netns exec "$lab-n2-p1" "$t" udp-send --to "[$a3]:6001" --interval-ms 1 --duration-s "$secs" >/dev/null &
  ip netns exec "$lab-n3-p1" "$t" udp-send --to "$a1:6002" --interval-ms 1 --duration-s "$secs" >/dev/null &
  sleep 2
  for _ in $(seq "$rounds"); do "$m" lab rotate-key --name "$lab" >/dev/null; done
  wait
  line=$(cat "$out/1" "$out/2" "$out/3" | python3 -c "
import json, sys
lost = [json.loads(l) for l in sys.stdin if l.startswith('{')]
print(' '.join(f\"lost={r['lost']}/{r['received'] + r['lost']}\" + (f\" runs={r['lost_runs']}\" if r.get('lost_runs') else '') for r in lost))")
  echo "run $run: $line"
  case "$line" in *"lost="[1-9]*) lost_any=1 ;; esac
  "$m" lab down --name "$lab" >/dev/null 2>&1
  rm -rf "$out"
  trap - EXIT
done
exit "$lost_any"
