#!/usr/bin/env bash
# The adaptive worker (issue 23): what an idle switch costs, and its latency beside busy polling.
# On the topology of ../shared/bench (its scripts are sourced, not copied):
#
#   [bgen: bg0] <-veth-> bg1 == switch == bs1 <-veth-> [bsink: bs0]
#
# For each of ROUNDS rounds, idle = "adaptive" then idle = "busy" (configs/bench-two-port.toml
# otherwise): the switch's CPU time over IDLE_S seconds with no traffic (utime + stime of the
# process, from /proc), then the harness's latency phase (ping, sockperf ping-pong). Results go
# to $RES (TSV).
#
# Usage (root): benches/idle.sh     env: ROUNDS (3), IDLE_S (10), RES, SHARED_BENCH
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}
[ -f "$SHARED/lib.sh" ] || { echo "idle.sh: needs the shared harness at $SHARED (set SHARED_BENCH)" >&2; exit 1; }
# shellcheck source=/dev/null
source "$SHARED/lib.sh"; source "$SHARED/measure.sh"; source "$SHARED/duts.sh"
RES=${RES:-/tmp/xswitch-idle-$(date +%Y%m%d-%H%M%S).tsv}
ROUNDS=${ROUNDS:-3}
IDLE_S=${IDLE_S:-10}
DUT_READY_S=${DUT_READY_S:-3}
CFG_DIR=$(mktemp -d /tmp/xswitch-idle.XXXXXX)

cleanup() { dut_cmd_stop >/dev/null 2>&1; ns_pass_off; topo_down; xdp_unload; rm -rf "$CFG_DIR"; }
trap 'cleanup; exit 130' INT TERM

# CPU seconds (user + system) the process has used.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }

(cd "$ROOT" && cargo build --release -q -p xswitch) || exit 1
xdp_build || exit 1
topo_up; xdp_load || { cleanup; exit 1; }
echo -e "# $(date -Is) kernel=$(uname -r) cpus=$(nproc) GEN_CPU=$GEN_CPU DUT_CPU=$DUT_CPU IDLE_S=$IDLE_S idle" >> "$RES"
for round in $(seq 1 "$ROUNDS"); do
  for mode in adaptive busy; do
    log "=== round $round: idle = $mode ==="
    sed "s/^idle = .*/idle = \"$mode\"/" "$ROOT/configs/bench-two-port.toml" > "$CFG_DIR/$mode.toml"
    DUT_CMD="$ROOT/target/release/xswitch run -c $CFG_DIR/$mode.toml"
    dut_cmd_start || { log "xswitch failed to start"; cleanup; exit 1; }
    a=$(cpu_s "$DUT_PID"); sleep "$IDLE_S"; b=$(cpu_s "$DUT_PID")
    pct=$(awk -v a="$a" -v b="$b" -v s="$IDLE_S" 'BEGIN{printf "%.2f", 100 * (b - a) / s}')
    log "  xswitch $mode: $pct % of a core idle"
    printf "xswitch_%s\tidle_cpu_pct\t%s\n" "$mode" "$pct" >> "$RES"
    ns_pass_on; lat_test "xswitch_$mode"; ns_pass_off
    dut_cmd_stop
    lost=$(grep -o '[0-9]* lost in the kernel' /tmp/bench-cmd.log | head -1)
    printf "xswitch_%s\tkernel_lost\t%s\n" "$mode" "${lost:-no figure}" >> "$RES"
  done
done
cleanup
column -t -s $'\t' "$RES"
