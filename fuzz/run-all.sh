#!/bin/sh
# Runs every target (or those named) for a million executions, one at a time, niced, from
# its committed seeds plus the corpus it grew before (fuzz/corpus/<target>, not committed).
# Each run's libFuzzer output is kept in fuzz/logs/<target>.log; the last line of each log
# has the executions, the coverage and the corpus size for docs/fuzzing.md.
set -eu
cd "$(dirname "$0")"
runs=${RUNS:-1000000}
targets=${*:-$(cargo +nightly fuzz list)}
mkdir -p logs
for t in $targets; do
    mkdir -p "corpus/$t"
    start=$(date +%s)
    status=0
    nice -n 10 cargo +nightly fuzz run -s none "$t" "corpus/$t" "seeds/$t" -- \
        -runs="$runs" -jobs=1 -workers=1 -print_final_stats=1 >"logs/$t.out" 2>&1 || status=$?
    end=$(date +%s)
    # With -jobs=1 libFuzzer writes the job's output to fuzz-0.log in the working directory.
    if [ -f fuzz-0.log ]; then mv fuzz-0.log "logs/$t.log"; fi
    echo "$t status=$status seconds=$((end - start))"
    grep -E '^#[0-9]+[[:space:]]+DONE|^Done|stat::number_of_executed_units|stat::peak_rss_mb' "logs/$t.log" || true
done
