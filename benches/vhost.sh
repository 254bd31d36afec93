#!/usr/bin/env bash
# vhost-user against tap (issue 21): 64-byte frames looping between two ports of one DPDK
# testpmd (io forwarding: what comes in on one port goes out of the other, as a VM forwarding
# between two NICs does), through the switch, which switches every frame from one port to the
# other. First through two vhost-user ports (testpmd's virtio-user devices), then through two
# tap ports (AF_XDP on the taps testpmd's net_tap devices read and write); the two cases
# alternate, ROUNDS times.
#
#   testpmd port 0 ─virtio-user─▶ xswitch ─virtio-user─▶ testpmd port 1 ─┐ (and back)
#   testpmd port 0 ─net_tap─▶ vbtap0 ─AF_XDP─▶ xswitch ─AF_XDP─▶ vbtap1 ─net_tap─▶ port 1
#
# testpmd forwards on lcore 1 and starts the loop with 16 bursts of 32 frames per port; the
# switch's one worker is pinned to core 0 and busy-polls. Per case: frames the switch received
# per second (its counters over DUR seconds), and from its stop summary the worker's busy share
# and busy ns per packet, so packets per second per switch core (1e9 / busy ns).
#
# With OVS=1 (and Debian's openvswitch-switch-dpdk installed: not by scripts/setup, the tests do
# not need it), a third case per round: the same
# loop through Open vSwitch's userspace datapath with DPDK (ovs-vswitchd-dpdk, a bridge of
# datapath_type=netdev with two dpdkvhostuserclient ports, testpmd's virtio-user devices in
# server mode), its one PMD thread on core 0; rate and processing cycles per packet from
# `ovs-appctl dpif-netdev/pmd-stats-show` over DUR seconds. OVS's DPDK will not start without
# huge pages (it adds --in-memory, which --no-huge excludes), so this case reserves 600 pages of
# 2 MiB (given back at the end) and mounts hugetlbfs if none is mounted.
#
# Usage (root): benches/vhost.sh     env: ROUNDS (3), DUR (10 s), RES, OVS (0), PERF (a path:
# `perf record` of the switch during each case's DUR seconds, to PERF.CASE)
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
RES=${RES:-/tmp/xswitch-vhost-$(date +%Y%m%d-%H%M%S).tsv}
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-10}
DIR=$(mktemp -d /tmp/xswitch-vhostbench.XXXXXX)
PMD_PID=""
SW_PID=""

log() { echo "[$(date +%T)] $*" >&2; }
stop_pmd() { pkill -9 -f "file-prefix xsvb" 2>/dev/null; [ -n "$PMD_PID" ] && wait "$PMD_PID" 2>/dev/null; PMD_PID=""; sleep 0.5; }
stop_sw() { [ -n "$SW_PID" ] && kill -TERM "$SW_PID" 2>/dev/null; for _ in $(seq 150); do kill -0 "$SW_PID" 2>/dev/null || break; sleep 0.1; done; SW_PID=""; }
stop_ovs() { # TERM, then KILL after 10 s: a new ovs-vswitchd-dpdk fails while the old one holds its pages
  local pids="" p
  for p in "$DIR"/ovs/*.pid; do [ -f "$p" ] && pids="$pids $(cat "$p")"; done
  [ -n "$pids" ] || return 0
  kill $pids 2>/dev/null
  for _ in $(seq 100); do kill -0 $pids 2>/dev/null || break; sleep 0.1; done
  kill -9 $pids 2>/dev/null; sleep 0.5; rm -f "$DIR"/ovs/*.pid; }
HUGE_BEFORE=$(cat /proc/sys/vm/nr_hugepages)
cleanup() { stop_pmd; stop_sw; stop_ovs; exec 3>&-; rm -rf "$DIR"; echo "$HUGE_BEFORE" > /proc/sys/vm/nr_hugepages; }
trap 'cleanup; exit 130' INT TERM

(cd "$ROOT" && cargo build --release -q -p xswitch) || exit 1
command -v dpdk-testpmd >/dev/null || { echo "vhost.sh: needs dpdk-testpmd (scripts/setup)" >&2; exit 1; }
MAC0=02:00:00:00:0b:01
MAC1=02:00:00:00:0b:02
rx() { "$ROOT/target/release/xswitch" ctl -c "$DIR/sw.toml" --json counters \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["rx_packets"])'; }

config() { # $1, $2: the ports "a" and "b" (a TOML line each)
  cat > "$DIR/sw.toml" <<EOF
[switch]
workers = 1
cores = [0]
frames = 16384
ring_size = 1024
idle = "busy"
[metrics]
enabled = false
[control]
socket = "$DIR/ctl.sock"
[ports.a]
kind = "tenant"
$1
[ports.b]
kind = "tenant"
$2
[tenants.bench]
attach = [{ port = "a" }, { port = "b" }]
EOF
}

start_sw() {
  "$ROOT/target/release/xswitch" run -c "$DIR/sw.toml" 2> "$DIR/sw.log" & SW_PID=$!
  for _ in $(seq 100); do grep -q switching "$DIR/sw.log" && return 0; sleep 0.1; done
  log "xswitch did not start:"; cat "$DIR/sw.log" >&2; return 1
}

start_pmd() { # $1, $2: the vdevs
  # Interactive, its commands from a FIFO this script holds open.
  [ -p "$DIR/stdin" ] || { mkfifo "$DIR/stdin"; exec 3<> "$DIR/stdin"; }
  dpdk-testpmd -l 0,1 --no-huge -m 256 --no-pci --file-prefix xsvb --vdev "$1" --vdev "$2" -- -i \
    --forward-mode=io --eth-peer=0,$MAC1 --eth-peer=1,$MAC0 --total-num-mbufs=16384 --txpkts=64 \
    < "$DIR/stdin" > "$DIR/pmd.log" 2>&1 & PMD_PID=$!
}

# Starts the loop once the ports are up: 16 bursts of 32 frames on each port.
go() { sleep 2; echo "start tx_first 16" >&3; }

measure() { # $1: case name
  go; sleep 2
  local a b; a=$(rx)
  if [ -n "${PERF:-}" ]; then
    perf record -q -F 999 -g -p "$SW_PID" -o "$PERF.$1" -- sleep "$DUR" 2>/dev/null
  else
    sleep "$DUR"
  fi
  b=$(rx)
  stop_pmd; stop_sw
  local pps busy ns
  pps=$(( (b - a) / DUR ))
  busy=$(grep -o 'busy [0-9.]* % of the time' "$DIR/sw.log" | head -1 | awk '{print $2}')
  ns=$(grep -o '[0-9.]* ns ([0-9]* cycles at [0-9]* MHz) busy per packet' "$DIR/sw.log" | head -1 | awk '{print $1}')
  local cyc; cyc=$(grep -o '([0-9]* cycles at [0-9]* MHz) busy per packet' "$DIR/sw.log" | head -1 | tr -d '(' | awk '{print $1}')
  local per_core; per_core=$(awk -v n="${ns:-0}" 'BEGIN{ if (n > 0) printf "%.0f", 1e9 / n; else print 0 }')
  log "  $1: $pps frames/s switched, worker busy ${busy:-?} %, ${ns:-?} ns a packet: $per_core packets/s per core"
  printf "%s\t%s\t%s\t%s\t%s\t%s\n" "$1" "$pps" "${busy:-}" "${ns:-}" "$per_core" "${cyc:-}" >> "$RES"
}

# Open vSwitch with DPDK, the same loop: its rate and processing cycles per packet (TSC cycles,
# as the switch's "cycles at MHz" are).
ovs_case() {
  local O="$DIR/ovs"
  rm -rf "$O"; mkdir -p "$O"
  [ "$(cat /proc/sys/vm/nr_hugepages)" -ge 600 ] || echo 600 > /proc/sys/vm/nr_hugepages
  mount | grep -q hugetlbfs || { mkdir -p /dev/hugepages; mount -t hugetlbfs nodev /dev/hugepages; }
  local V="ovs-vsctl --db=unix:$O/db.sock"
  ovsdb-tool create "$O/conf.db" /usr/share/openvswitch/vswitch.ovsschema
  OVS_RUNDIR=$O ovsdb-server "$O/conf.db" --remote="punix:$O/db.sock" --pidfile="$O/ovsdb.pid" \
    --detach --log-file="$O/ovsdb.log"
  $V --no-wait init
  $V --no-wait set Open_vSwitch . other_config:dpdk-init=true other_config:dpdk-extra=--no-pci \
    other_config:dpdk-socket-mem=512 other_config:pmd-cpu-mask=0x1 other_config:dpdk-lcore-mask=0x2
  OVS_RUNDIR=$O /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk "unix:$O/db.sock" \
    --pidfile="$O/vswitchd.pid" --detach --log-file="$O/vswitchd.log" >/dev/null 2>&1 \
    || { log "ovs-vswitchd-dpdk did not start:"; tail -5 "$O/vswitchd.log" >&2; return 1; }
  timeout 30 $V add-br br0 -- set bridge br0 datapath_type=netdev
  for p in a b; do
    timeout 30 $V add-port br0 $p -- set Interface $p type=dpdkvhostuserclient \
      "options:vhost-server-path=$DIR/o$p.sock"
  done
  # A testpmd killed with -9 leaves its sockets behind, which the next one does not bind over.
  rm -f "$DIR/oa.sock" "$DIR/ob.sock"
  start_pmd "net_virtio_user0,path=$DIR/oa.sock,queues=1,mac=$MAC0,server=1" \
    "net_virtio_user1,path=$DIR/ob.sock,queues=1,mac=$MAC1,server=1"
  sleep 3
  go; sleep 2
  local ctl; ctl=$(ls "$O"/ovs-vswitchd*.ctl)
  ovs-appctl -t "$ctl" dpif-netdev/pmd-stats-clear
  sleep "$DUR"
  ovs-appctl -t "$ctl" dpif-netdev/pmd-stats-show > "$O/stats"
  stop_pmd; stop_ovs
  local pkts cyc pps
  pkts=$(awk '/core_id 0/ { f = 1 } f && /packets received/ { print $3; exit }' "$O/stats")
  cyc=$(awk '/core_id 0/ { f = 1 } f && /avg processing cycles per packet/ { print $6; exit }' "$O/stats")
  [ "${pkts:-0}" -gt 0 ] || { log "  ovs_dpdk: no PMD statistics:"; cat "$O/stats" >&2; grep -E "ERR|EMER" "$O/vswitchd.log" | tail -5 >&2; }
  pps=$(( ${pkts:-0} / DUR ))
  log "  ovs_dpdk: $pps frames/s switched, ${cyc:-?} processing cycles a packet"
  printf "%s\t%s\t%s\t%s\t%s\t%s\n" ovs_dpdk "$pps" "" "" "" "${cyc:-}" >> "$RES"
}

echo -e "# $(date -Is) kernel=$(uname -r) cpus=$(nproc) DUR=$DUR case pps busy_pct busy_ns per_core_pps busy_cycles" >> "$RES"
for round in $(seq 1 "$ROUNDS"); do
  log "=== round $round: vhost-user ==="
  config "vhost_user = { socket = \"$DIR/a.sock\" }" "vhost_user = { socket = \"$DIR/b.sock\" }"
  start_sw || { cleanup; exit 1; }
  start_pmd "net_virtio_user0,path=$DIR/a.sock,queues=1,mac=$MAC0" \
    "net_virtio_user1,path=$DIR/b.sock,queues=1,mac=$MAC1"
  measure vhost_user
  log "=== round $round: tap (AF_XDP) ==="
  # testpmd makes the taps first; the switch opens AF_XDP on them.
  start_pmd "net_tap0,iface=vbtap0,mac=$MAC0" "net_tap1,iface=vbtap1,mac=$MAC1"
  for _ in $(seq 100); do [ -e /sys/class/net/vbtap1 ] && break; sleep 0.1; done
  config "interface = \"vbtap0\"" "interface = \"vbtap1\""
  start_sw || { cleanup; exit 1; }
  measure tap_afxdp
  if [ "${OVS:-0}" = 1 ]; then
    log "=== round $round: Open vSwitch (DPDK, dpdkvhostuserclient) ==="
    ovs_case || log "  ovs_dpdk failed"
  fi
done
cleanup
column -t -s $'\t' "$RES"
