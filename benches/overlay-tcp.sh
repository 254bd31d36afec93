#!/usr/bin/env bash
# TCP between two hosts over a VXLAN overlay (issue 22): through two xswitch processes (the
# cluster map in etcd) against the same through the Linux kernel's own VXLAN devices on a
# bridge, side by side, ROUNDS times alternately. Each "host" is a network namespace pair:
#
#   xswitch: vm-a ─veth─ xswitch a ─ul─┐                 ┌─ul─ xswitch b ─veth─ vm-b
#                                      ├─ underlay br0 ──┤
#   kernel:  vm-c ─veth─ br0+vxlan0 (c)┘                 └(d) br0+vxlan0 ─veth─ vm-d
#
# Same underlay bridge (MTU 1600), same VNI, same 10.30.0.0/24 addresses in each pair's VMs,
# the VMs' default offloads (TSO, checksum offload) on; iperf3 -c for DUR seconds, one stream.
# Prints each round's rates and the medians.
#
# Usage (root): benches/overlay-tcp.sh     env: ROUNDS (3), DUR (5 s)
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-5}
T=ob$$
DIR=$(mktemp -d /tmp/xswitch-overlay-bench.XXXXXX)
PORT=$((24000 + $$ % 1000 * 2))
PIDS=()

log() { echo "[$(date +%T)] $*" >&2; }
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  for n in ul va vb vc vd c d; do ip netns del "$T-$n" 2>/dev/null; done
  for l in ${T}ua ${T}ub ${T}a ${T}b; do ip link del "$l" 2>/dev/null; done
  rm -rf "$DIR"
}
trap 'cleanup; exit 130' INT TERM
trap cleanup EXIT

(cd "$ROOT" && cargo build --release -q -p xswitch) || exit 1
XS=$ROOT/target/release/xswitch

ns() { ip netns add "$T-$1"; ip -n "$T-$1" link set lo up; }
ns ul
ip -n "$T-ul" link add br0 type bridge
ip -n "$T-ul" link set br0 up
# $1: interface in the root namespace (or $2 namespace), $3: its bridge-side peer.
uport() {
  if [ -z "$2" ]; then
    ip link add "$1" mtu 1600 type veth peer name "$3" netns "$T-ul"
    ip link set "$1" up
  else
    ip -n "$2" link add "$1" mtu 1600 type veth peer name "$3" netns "$T-ul"
    ip -n "$2" link set "$1" up
  fi
  ip -n "$T-ul" link set "$3" mtu 1600 master br0 up
}
# A VM namespace $1 with address $2, its other end $3 in the root namespace (or $4's).
vm() {
  ns "$1"
  if [ -z "${4:-}" ]; then
    ip link add "$3" type veth peer name eth0 netns "$T-$1"; ip link set "$3" up
  else
    ip -n "$4" link add "$3" type veth peer name eth0 netns "$T-$1"; ip -n "$4" link set "$3" up
  fi
  ip -n "$T-$1" addr add "$2/24" dev eth0
  ip -n "$T-$1" link set eth0 up
}

# etcd on loopback ports of its own.
etcd --name b --data-dir "$DIR/etcd" --listen-client-urls "http://127.0.0.1:$PORT" \
  --advertise-client-urls "http://127.0.0.1:$PORT" --listen-peer-urls "http://127.0.0.1:$((PORT + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((PORT + 1))" \
  --initial-cluster "b=http://127.0.0.1:$((PORT + 1))" > "$DIR/etcd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$PORT" endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done

# The xswitch pair.
for h in a b; do
  ip=$([ $h = a ] && echo 1 || echo 2)
  uport "${T}u$h" "" "p$h"
  vm "v$h" "10.30.0.$ip" "${T}$h"
  mac=$(ip netns exec "$T-v$h" cat /sys/class/net/eth0/address)
  cat > "$DIR/$h.toml" <<EOF
[switch]
workers = 1
frames = 16384
ring_size = 512
idle = "adaptive"
[metrics]
enabled = false
[control]
socket = "$DIR/$h.sock"
[cluster]
etcd = ["http://127.0.0.1:$PORT"]
host = "$h"
[ports.ul]
interface = "${T}u$h"
kind = "underlay"
[ports.ul.tunnel]
address = "192.168.90.$ip"
[ports.vm]
interface = "${T}$h"
kind = "tenant"
[tenants.t]
vni = 100
attach = [{ port = "vm", macs = ["$mac"], ips = ["10.30.0.$ip"] }]
EOF
  "$XS" run -c "$DIR/$h.toml" > "$DIR/$h.log" 2>&1 &
  PIDS+=($!)
done
# Each switch busy-polls a core of its own: 2 cores, 2 switches.
sleep 3
grep -q switching "$DIR/a.log" && grep -q switching "$DIR/b.log" || { log "a switch did not start"; cat "$DIR"/*.log; exit 1; }

# The kernel pair: a bridge with the VXLAN device and the VM's veth, per host.
for h in c d; do
  ip=$([ $h = c ] && echo 3 || echo 4)
  peer=$([ $h = c ] && echo 4 || echo 3)
  ns "$h"
  uport eth0 "$T-$h" "p$h"
  ip -n "$T-$h" addr add "192.168.90.$ip/24" dev eth0
  ip -n "$T-$h" link add vxlan0 type vxlan id 200 dstport 4789 local "192.168.90.$ip" dev eth0 nolearning
  ip -n "$T-$h" link add br0 type bridge
  ip -n "$T-$h" link set vxlan0 master br0 up
  ip -n "$T-$h" link set br0 up
  vm "v$h" "10.30.0.$([ $h = c ] && echo 1 || echo 2)" vm0 "$T-$h"
  ip -n "$T-$h" link set vm0 master br0 up
  bridge -n "$T-$h" fdb append 00:00:00:00:00:00 dev vxlan0 dst "192.168.90.$peer"
done

iperf() { # $1 client namespace, $2 server namespace, $3 server address
  ip netns exec "$T-$2" iperf3 -s -1 -p 5299 > /dev/null 2>&1 &
  local s=$!
  sleep 0.5
  ip netns exec "$T-$1" timeout $((DUR + 10)) iperf3 -c "$3" -p 5299 -t "$DUR" -J 2>/dev/null |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6))' 2>/dev/null || echo 0
  wait $s 2>/dev/null
}
ip netns exec "$T-va" ping -c 3 -i 0.2 -W 1 10.30.0.2 > /dev/null || log "xswitch pair: no ping"
ip netns exec "$T-vc" ping -c 3 -i 0.2 -W 1 10.30.0.2 > /dev/null || log "kernel pair: no ping"

XR=(); KR=()
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    x=$(iperf va vb 10.30.0.2); k=$(iperf vc vd 10.30.0.2)
  else
    k=$(iperf vc vd 10.30.0.2); x=$(iperf va vb 10.30.0.2)
  fi
  log "round $r: xswitch $x Mbit/s, kernel VXLAN $k Mbit/s"
  XR+=("$x"); KR+=("$k")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "TCP over VXLAN, ${DUR} s, one stream, medians of $ROUNDS: xswitch $(median "${XR[@]}") Mbit/s, kernel VXLAN on a bridge $(median "${KR[@]}") Mbit/s"
