#!/usr/bin/env bash
# The demo's whole `dvc repro` for several commits, alternating, in fresh clones (an empty DVC cache each), so the
# machine's drift falls on all of them alike. Run from the project with its venv active:
#   bash bench/demo_time.sh 2148919 HEAD        # prints "<commit> round <r>: <seconds> s", three rounds
set -uo pipefail
repo=$(pwd) rounds=${ROUNDS:-3} work=${WORK:-/tmp/demo-time}
export TF_CPP_MIN_LOG_LEVEL=2
lscpu | grep -E "^Model name" ; echo "flags: $(grep -o -w -E 'avx2|avx512f|avx512_vnni|avx512_bf16|amx_int8' /proc/cpuinfo | sort -u | tr '\n' ' ')"
for round in $(seq "$rounds"); do
  for commit in "$@"; do
    dir=$work/$commit-$round
    rm -rf "$dir" && git clone -q "$repo" "$dir" && git -C "$dir" checkout -q "$commit"
    start=$(date +%s.%N)
    (cd "$dir" && dvc repro > "$dir.log" 2>&1) || echo "$commit round $round: failed, see $dir.log"
    echo "$commit round $round: $(echo "$(date +%s.%N) - $start" | bc) s"
  done
done
