#!/usr/bin/env bash
# End-to-end benchmark: xswitch and the Linux bridge, one after the other in one run, on the
# two-namespace topology of ../shared/bench (its scripts are sourced, not copied: same
# topology, traffic, pinning and measurement as the side-by-side baselines).
#
#   [bgen: bg0] <-veth-> bg1 == switch == bs1 <-veth-> [bsink: bs0]
#
# xswitch is started afresh for each phase (latency, TCP, UDP 1 flow, UDP 1000 flows), so the
# busy cycles per packet it reports at exit belong to that phase's traffic alone.
#
# At the end the results go into docs/PERFORMANCE.md (between the e2e markers) through
# benches/e2e-report.py; DOC= (empty) leaves the doc alone.
#
# Usage (root): benches/e2e.sh     env: DUR (10 s), RUNS (3), RES, SHARED_BENCH,
#                                       CONFIG (configs/bench-two-port.toml), DOC
# Needs: netsniff-ng iperf3 sockperf clang llvm libbpf-dev bpftool (scripts/setup installs them).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}
[ -f "$SHARED/lib.sh" ] || { echo "e2e.sh: needs the shared harness at $SHARED (set SHARED_BENCH)" >&2; exit 1; }
# shellcheck source=/dev/null
source "$SHARED/lib.sh"; source "$SHARED/measure.sh"; source "$SHARED/duts.sh"
RES=${RES:-/tmp/xswitch-e2e-$(date +%Y%m%d-%H%M%S).tsv}
CONFIG=${CONFIG:-$ROOT/configs/bench-two-port.toml}
DOC=${DOC-$ROOT/docs/PERFORMANCE.md}
DUT_CMD="$ROOT/target/release/xswitch run -c $CONFIG"
DUT_READY_S=${DUT_READY_S:-3}
# The per-run lines (offered and delivered of the same run) go to $RES.log too: the report takes
# the loss of each run from there, not from medians of offered and delivered taken separately.
exec 2> >(tee -a "$RES.log" >&2)

cleanup() { wmem_restore; dut_cmd_stop >/dev/null 2>&1; dut_bridge_stop >/dev/null 2>&1
  xdp_detach - bg1; xdp_detach - bs1; topo_down; xdp_unload; }
trap 'cleanup; exit 130' INT TERM

(cd "$ROOT" && cargo build --release -q -p xswitch) || exit 1
xdp_build || exit 1
topo_up; xdp_load || { cleanup; exit 1; }
echo -e "# $(date -Is) kernel=$(uname -r) cpus=$(nproc) GEN_CPU=$GEN_CPU DUT_CPU=$DUT_CPU DUR=$DUR RUNS=$RUNS" >> "$RES"

log "=== Linux bridge ==="
dut_bridge_start && run_all bridge; dut_bridge_stop

lat()  { ns_pass_on; lat_test xswitch; ns_pass_off; }
tcp()  { ns_pass_on; tcp_test xswitch; ns_pass_off; }
udp1() { udp_test xswitch 1; }
udpk() { udp_test xswitch 1000; }
for phase in lat tcp udp1 udpk; do
  log "=== xswitch: $phase ==="
  dut_cmd_start || { log "xswitch failed to start"; cleanup; exit 1; }
  $phase
  dut_cmd_stop
  cycles=$(grep -o '([0-9]* cycles at [0-9]* MHz)' /tmp/bench-cmd.log | tr -d '()')
  grep -q "balanced" /tmp/bench-cmd.log || log "xswitch: frame accounting did not balance"
  printf "xswitch\t%s_busy\t%s\n" "$phase" "${cycles:-no figure} per packet" >> "$RES"
done
cleanup
column -t -s $'\t' "$RES"
if [ -n "$DOC" ]; then
  python3 "$HERE/e2e-report.py" "$RES" "$DOC" "benches/e2e.sh (CONFIG=${CONFIG#"$ROOT"/} DUR=$DUR RUNS=$RUNS)" >/dev/null \
    && echo "e2e.sh: results written to $DOC"
fi
