#!/usr/bin/env bash
# Jumbo frames (issue 23): iperf3 TCP through xswitch at MTU 1 500, 9 000 and 64 000, and
# through the Linux bridge (and Open vSwitch's AF_XDP ports, where installed) at 9 000, on the
# topology of ../shared/bench (its scripts are sourced, not copied: same namespaces, offloads
# off on the namespace ends, pinning and iperf3 runs):
#
#   [bgen: bg0] <-veth-> bg1 == switch == bs1 <-veth-> [bsink: bs0]
#
# Every interface of the topology gets the MTU of the phase; xswitch runs the bench config with
# 2 048-byte frames (6 frames a 9 000-byte packet), 4 096 (3 frames; MTU 64 000 needs them), or
# the default (`frame_size = 0`: 4 096 at MTU 9 000, chosen from the MTUs; phase x9000auto).
# Unlike the harness's TCP phase the namespace ends get no XDP program (its `xdp_pass` is not
# marked for frags, and the kernel refuses it at MTU 9 000), so every phase goes without. The phases alternate ROUNDS times,
# so each figure is taken beside the others; each phase is RUNS iperf3 runs of DUR seconds
# (tcp_test of the shared harness: the median goes to $RES).
#
# Usage (root): benches/jumbo.sh    env: DUR (10 s), RUNS (3), ROUNDS (2), RES, SHARED_BENCH,
#                                        PHASES ("x1500 x9000 x9000auto bridge9000 x64000 ovs9000";
#                                        also x9000f4k: 4 096 set in the config;
#                                        bridge1500: the bridge's own ratio, 9 000 to 1 500)
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}
[ -f "$SHARED/lib.sh" ] || { echo "jumbo.sh: needs the shared harness at $SHARED (set SHARED_BENCH)" >&2; exit 1; }
# shellcheck source=/dev/null
source "$SHARED/lib.sh"; source "$SHARED/measure.sh"; source "$SHARED/duts.sh"
RES=${RES:-/tmp/xswitch-jumbo-$(date +%Y%m%d-%H%M%S).tsv}
ROUNDS=${ROUNDS:-2}
PHASES=${PHASES:-x1500 x9000 x9000auto bridge9000 x64000 ovs9000}
DUT_READY_S=${DUT_READY_S:-3}
CFG_DIR=$(mktemp -d /tmp/xswitch-jumbo.XXXXXX)

cleanup() { dut_cmd_stop >/dev/null 2>&1; dut_bridge_stop >/dev/null 2>&1; dut_ovs_stop >/dev/null 2>&1
  topo_down; rm -rf "$CFG_DIR"; }
trap 'cleanup; exit 130' INT TERM

# The bench config with a frame size (64 000 needs 4 096-byte frames: 18 x 3 840 bytes).
config() { sed "s/^frame_size = .*/frame_size = $1/" "$ROOT/configs/bench-two-port.toml" > "$CFG_DIR/$1.toml"
  echo "$CFG_DIR/$1.toml"; }
set_mtu() { ip -n bgen link set bg0 mtu "$1" && ip link set bg1 mtu "$1" && ip link set bs1 mtu "$1" \
  && ip -n bsink link set bs0 mtu "$1"; }

xswitch_phase() { local name=$1 mtu=$2 frame=$3
  set_mtu "$mtu" || { log "MTU $mtu refused"; return 1; }
  DUT_CMD="$ROOT/target/release/xswitch run -c $(config "$frame")"
  dut_cmd_start || { log "xswitch failed to start at MTU $mtu"; return 1; }
  tcp_test "$name"
  dut_cmd_stop
  grep -q "refused multi-buffer" /tmp/bench-cmd.log && log "$name: a port refused multi-buffer"
  grep -q "balanced" /tmp/bench-cmd.log || log "$name: frame accounting did not balance"
  local lost; lost=$(grep -o '[0-9]* lost in the kernel' /tmp/bench-cmd.log | head -1)
  printf "%s\tkernel_lost\t%s\n" "$name" "${lost:-no figure}" >> "$RES"
  local chosen; chosen=$(grep -o 'frames of [0-9]* bytes' /tmp/bench-cmd.log | head -1)
  [ -n "$chosen" ] && printf "%s\tframe_size\t%s\n" "$name" "$chosen" >> "$RES"
}

(cd "$ROOT" && cargo build --release -q -p xswitch) || exit 1
topo_up
echo -e "# $(date -Is) kernel=$(uname -r) cpus=$(nproc) GEN_CPU=$GEN_CPU DUT_CPU=$DUT_CPU DUR=$DUR RUNS=$RUNS jumbo" >> "$RES"
for round in $(seq 1 "$ROUNDS"); do
  for phase in $PHASES; do
    log "=== round $round: $phase ==="
    case $phase in
      x1500) xswitch_phase xswitch_mtu1500 1500 2048 ;;
      x9000) xswitch_phase xswitch_mtu9000 9000 2048 ;;
      x9000f4k) xswitch_phase xswitch_mtu9000_frame4096 9000 4096 ;;
      x9000auto) xswitch_phase xswitch_mtu9000_default 9000 0 ;;
      x64000) xswitch_phase xswitch_mtu64000 64000 4096 ;;
      bridge1500) set_mtu 1500 && dut_bridge_start && { tcp_test bridge_mtu1500; dut_bridge_stop; } ;;
      bridge9000) set_mtu 9000 && dut_bridge_start && { tcp_test bridge_mtu9000; dut_bridge_stop; } ;;
      ovs9000)
        command -v ovs-vswitchd >/dev/null || { log "no Open vSwitch here: skipped"; continue; }
        set_mtu 9000 && dut_ovs_start && { tcp_test ovs_afxdp_mtu9000; dut_ovs_stop; }
        grep -iE "mtu|frags|xdp" /tmp/bench-ovs/ovs-vswitchd.log 2>/dev/null | tail -5 >&2 ;;
      *) log "unknown phase $phase" ;;
    esac
  done
done
cleanup
column -t -s $'\t' "$RES"
