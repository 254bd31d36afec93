#!/usr/bin/env bash
# Latency beside Open vSwitch (issue 23): the shared harness's latency phase (ping, then sockperf
# ping-pong, 64-byte messages, 5 s) through xswitch and through Open vSwitch's userspace
# datapath with AF_XDP ports, alternating, ROUNDS rounds, on the topology of ../shared/bench
# (its scripts are sourced, not copied; the namespace ends carry an XDP pass program as in its
# full battery):
#
#   [bgen: bg0] <-veth-> bg1 == switch == bs1 <-veth-> [bsink: bs0]
#
# Prints, per switch, sockperf's one-way p50 and p99 of each round and their medians, and the
# per-round p99 ratio xswitch / Open vSwitch. Raw results go to $RES (TSV).
#
# Usage (root; openvswitch-switch installed): benches/latency.sh
#   env: ROUNDS (8), XSWITCH (the binary; default: target/release/xswitch, built), BASE (a
#   second binary, e.g. the commit before built in a worktree: a third phase "base" in each
#   round), CONFIG (configs/bench-two-port.toml), RES, SHARED_BENCH
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}
[ -f "$SHARED/lib.sh" ] || { echo "latency.sh: needs the shared harness at $SHARED (set SHARED_BENCH)" >&2; exit 1; }
command -v ovs-vswitchd >/dev/null || { echo "latency.sh: needs Open vSwitch (apt-get install openvswitch-switch)" >&2; exit 1; }
# shellcheck source=/dev/null
source "$SHARED/lib.sh"; source "$SHARED/measure.sh"; source "$SHARED/duts.sh"
RES=${RES:-/tmp/xswitch-latency-$(date +%Y%m%d-%H%M%S).tsv}
ROUNDS=${ROUNDS:-8}
CONFIG=${CONFIG:-$ROOT/configs/bench-two-port.toml}
if [ -z "${XSWITCH:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p xswitch) || exit 1
  XSWITCH=$ROOT/target/release/xswitch
fi
CUR=
cleanup() { [ -n "$CUR" ] && "dut_${CUR}_stop" >/dev/null 2>&1; CUR=; ns_pass_off; xdp_detach - bg1; xdp_detach - bs1; topo_down; xdp_unload; }
trap 'cleanup; exit 130' INT TERM

xdp_build || exit 1
topo_up; xdp_load || { cleanup; exit 1; }
echo -e "# $(date -Is) kernel=$(uname -r) cpus=$(nproc) GEN_CPU=$GEN_CPU DUT_CPU=$DUT_CPU latency" >> "$RES"
ns_pass_on
for round in $(seq 1 "$ROUNDS"); do
  for dut in ovs ${BASE:+base} xswitch; do
    log "=== round $round: $dut ==="
    case $dut in
      ovs) CUR=ovs ;;
      base) CUR=cmd; DUT_CMD="$BASE run -c $CONFIG" ;;
      *) CUR=cmd; DUT_CMD="$XSWITCH run -c $CONFIG" ;;
    esac
    if ! "dut_${CUR}_start"; then log "$dut did not start"; "dut_${CUR}_stop" >/dev/null 2>&1; CUR=; continue; fi
    lat_test "$dut"
    "dut_${CUR}_stop"; CUR=
    sleep 1
  done
done
cleanup
python3 - "$RES" <<'PY'
import statistics as st
import sys

rounds = {}
for line in open(sys.argv[1]):
    parts = line.rstrip("\n").split("\t")
    if len(parts) != 3 or parts[1] != "sockperf_us":
        continue
    kv = dict(x.split("=", 1) for x in parts[2].split() if "=" in x)
    rounds.setdefault(parts[0], []).append((float(kv["p50"]), float(kv["p99"])))
for dut, v in rounds.items():
    p50, p99 = [x[0] for x in v], [x[1] for x in v]
    print(f"{dut:8} p50 {st.median(p50):6.1f} µs  p99 {st.median(p99):6.1f} µs   (p99 by round: "
          + ", ".join(f"{x:.1f}" for x in p99) + ")")
for other in ("ovs", "base"):
    if other in rounds and "xswitch" in rounds:
        r = [b[1] / a[1] for a, b in zip(rounds[other], rounds["xswitch"])]
        print(f"p99 xswitch / {other} by round: " + ", ".join(f"{x:.2f}" for x in r)
              + f"; median {st.median(r):.2f}")
PY
