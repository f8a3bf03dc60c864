#!/usr/bin/env bash
# Runs every libFuzzer target built in BUILD_DIR (make fuzz):
#   scripts/run-fuzz.sh BUILD_DIR SECONDS   each target SECONDS on its kept corpus
#                                           (tests/fuzz/corpus/<target>) and regressions;
#                                           new inputs go to BUILD_DIR/corpus/<target>, a crash
#                                           to BUILD_DIR/crashes/<target>/
#   scripts/run-fuzz.sh BUILD_DIR merge     folds BUILD_DIR/corpus/<target> into the kept
#                                           corpus, minimised (-merge=1)
# Prints executions, corpus sizes and crashes per target; fails if a target crashed.
set -uo pipefail
cd "$(dirname "$0")/.."
build=$1
mode=$2
fuzz=tests/fuzz
failed=0
printf '%-22s %12s %10s %14s %8s\n' target executions exec/s "kept corpus" crashes
for bin in "$build"/fuzz_*; do
  [ -x "$bin" ] || continue
  target=$(basename "$bin")
  kept=$fuzz/corpus/$target
  found=$build/corpus/$target
  crashes=$build/crashes/$target
  mkdir -p "$kept" "$found" "$crashes" "$fuzz/regressions/$target"
  dict=()
  [ -f "$fuzz/$target.dict" ] && dict=(-dict="$fuzz/$target.dict")
  log=$build/$target.log
  if [ "$mode" = merge ]; then
    merged=$(mktemp -d)
    "$bin" -merge=1 "${dict[@]}" "$merged" "$kept" "$found" >"$log" 2>&1
    rm -rf "$kept" && mkdir -p "$kept" && cp "$merged"/* "$kept"/ 2>/dev/null
    rm -rf "$merged"
    printf '%-22s %12s %10s %14s %8s\n' "$target" - - \
      "$(ls "$kept" | wc -l) / $(du -sk "$kept" | cut -f1) KiB" -
    continue
  fi
  # Crashes of earlier runs stay in $crashes (for reading) but count only once: this run's
  # are the files newer than this mark.
  started=$(mktemp)
  # -timeout: an input taking this long is a hang; -rss_limit_mb: a parser that allocates
  # what a header claims is a crash.
  "$bin" -max_total_time="$mode" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$crashes/" "${dict[@]}" "$found" "$kept" "$fuzz/regressions/$target" \
    >"$log" 2>&1
  status=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  found_crashes=$(find "$crashes" -type f -newer "$started" | wc -l)
  rm -f "$started"
  printf '%-22s %12s %10s %14s %8s\n' "$target" "${execs:-?}" "${rate:-?}" \
    "$(ls "$kept" | wc -l) / $(du -sk "$kept" | cut -f1) KiB" "$found_crashes"
  if [ $status -ne 0 ] || [ "$found_crashes" -gt 0 ]; then
    failed=1
    echo "  $target failed: see $log and $crashes/; keep the input in $fuzz/regressions/$target/"
  fi
done
exit $failed
