#!/bin/bash
# Over a unix socket, does the sensor keep up with fstrm_replay? (docs/BENCHMARKS.md)
#
#   examples/socket_rounds.sh [ROUNDS] [FRAMES]
#
# Writes FRAMES (default 2,000,000) generated frames (`dnsledger tap generate`), then for
# ROUNDS rounds (default 8) replays them with `fstrm_replay -u` into, in turn,
# `fstrm_capture`, `dnsledger sensor` with its defaults, and the sensor with each setting
# of SENSOR_VARIANT (TOML lines, default `[store]\nidle_priority = false`; empty: none).
# Per run: the replay's wall time, its own user and kernel CPU and blocking waits
# (voluntary context switches), and for the sensor the frames it counted, the windows that
# waited for its store thread and its threads' CPU. Ends with each listener's median time and its median ratio to fstrm_capture's time
# in the same round.
# With SENDER_CPU and LISTENER_CPU set (CPU numbers or lists, as `taskset -c` takes them),
# the replay runs on the first and each listener, all its threads, on the second: each has
# cores of its own, and the scheduler cannot place the listener's reading thread beside the
# sender for a while, which on two cores it does more often to a listener with more threads.
# Needs fstrm-bin, curl, GNU time (/usr/bin/time), taskset (util-linux) and a release build
# (`cargo build --release`; DNSLEDGER_BIN overrides); the sensor's metrics use 127.0.0.1:9199.
set -euo pipefail
rounds=${1:-8}
frames=${2:-2000000}
bin=$(realpath "${DNSLEDGER_BIN:-target/release/dnsledger}")
variant=${SENSOR_VARIANT-$'[store]\nidle_priority = false'}
sender=()
listener=()
if [ -n "${SENDER_CPU:-}" ]; then sender=(taskset -c "$SENDER_CPU"); fi
if [ -n "${LISTENER_CPU:-}" ]; then listener=(taskset -c "$LISTENER_CPU"); fi
dir=$(mktemp -d)
ticks=$(getconf CLK_TCK)
# The listener of the run under way, stopped before its directory goes.
pid=""
trap 'if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; rm -rf "$dir"' EXIT
cd "$dir"
"$bin" tap generate --frames "$frames" in.fstrm >/dev/null 2>&1

# One run: $1 = label, $2 = "capture" or the sensor's extra TOML. Appends "label seconds".
run() {
    rm -rf db s.sock out.fstrm
    if [ "$2" = capture ]; then
        "${listener[@]}" fstrm_capture -t protobuf:dnstap.Dnstap -u s.sock -w out.fstrm 2>/dev/null &
        pid=$!
    else
        printf 'db = "%s/db"\n[listen]\nunix = ["%s/s.sock"]\n%s\n' "$dir" "$dir" "$2" >sensor.toml
        "${listener[@]}" "$bin" sensor -q -c sensor.toml --metrics 127.0.0.1:9199 2>sensor.log &
        pid=$!
    fi
    for _ in $(seq 200); do [ -S s.sock ] && break; sleep 0.05; done
    sleep 0.3
    local t
    t=$( { /usr/bin/time -f "%e %U %S %c %w" "${sender[@]}" fstrm_replay -t protobuf:dnstap.Dnstap -u s.sock -r in.fstrm; } 2>&1 | tail -1)
    local line="$1: replay ${t%% *} s (user, kernel, waits: $(echo "$t" | cut -d' ' -f2,3,5))"
    if [ "$2" != capture ]; then
        sleep 0.5
        local metrics got waited threads=""
        metrics=$(curl -s 127.0.0.1:9199/metrics || true)
        got=$(echo "$metrics" | awk '/^dnsledger_sensor_frames_in_total/ {print $2}')
        # Windows that waited for the store thread (it was raised to normal priority).
        waited=$(echo "$metrics" | awk '/^dnsledger_sensor_store_waits_total/ {print $2}')
        for task in /proc/"$pid"/task/*; do
            # User and kernel ticks: fields 14 and 15, counted after the name's closing ")".
            local cpu
            cpu=$(sed 's/.*) //' "$task/stat" 2>/dev/null | awk -v t="$ticks" '{print int(($12 + $13) * 1000 / t)}' || true)
            if [ "${cpu:-0}" -gt 0 ]; then threads+=" $(cat "$task/comm" 2>/dev/null || true) $cpu ms"; fi
        done
        line+=", frames in $got/$frames, store waits ${waited:-?}, threads:$threads"
    fi
    echo "$line"
    echo "$1 ${t%% *}" >>times
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" || true
    pid=""
}

for r in $(seq "$rounds"); do
    echo "round $r"
    run capture capture
    run sensor ""
    if [ -n "$variant" ]; then run variant "$variant"; fi
done
echo "medians of $rounds rounds (seconds; ratio: per round, to fstrm_capture's)"
for label in capture sensor variant; do
    grep -q "^$label " times || continue
    paste <(grep "^capture " times | cut -d' ' -f2) <(grep "^$label " times | cut -d' ' -f2) |
        awk -v l="$label" '{ t[NR] = $2; q[NR] = $2 / $1 }
            function med(a, n,   i, j, x) {
                for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j > 0 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
                return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
            END { printf "%-8s %.2f s, ratio %.2f\n", l, med(t, NR), med(q, NR) }'
done
