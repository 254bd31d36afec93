#!/usr/bin/env bash
# TCP between two VMs through two vhost-user ports (issue 21), with and without offloads:
# QEMU guests of scripts/guest-image (Debian's kernel and its virtio-net driver), vm2 running
# `iperf3 -c vm1` for DUR seconds. "offloads": the device as QEMU makes it, so the guests
# negotiate checksum offload and TSO and vm2 sends segments of up to 64 KiB, which cross the
# switch whole into vm1 (GUEST_TSO). "none": the same device with csum, gso and host/guest TSO
# off, so vm2's own stack segments and checksums every packet. With BASE=path, a third case
# each round: "offloads" through the xswitch binary at that path (the commit before, built in
# a worktree), side by side. The cases alternate, ROUNDS times.
#
#   vm2 ─virtio─▶ xswitch (vhost-user vm2 → vhost-user vm1) ─virtio─▶ vm1
#
# Per case: iperf3's received rate, and from the switch's stop summary the packets vm2's port
# took, the large segments it cut and those it took whole. The guests run under TCG by default (this machine's KVM
# does not boot them: docs/VM-PORTS.md), so the rates are bounded by emulated guest CPUs; the
# ratio says what the offloads spare a guest. ACCEL=kvm where KVM works.
#
# Usage (root): benches/vm-tcp.sh     env: ROUNDS (3), DUR (8 s), RES, ACCEL (tcg), BASE
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
RES=${RES:-/tmp/xswitch-vm-tcp-$(date +%Y%m%d-%H%M%S).tsv}
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-8}
ACCEL=${ACCEL:-tcg}
BASE=${BASE:-}
DIR=$(mktemp -d /tmp/xswitch-vmbench.XXXXXX)
SW_PID=""

log() { echo "[$(date +%T)] $*" >&2; }
stop_vms() { pkill -9 -f "qemu-system-x86_64.*$DIR" 2>/dev/null; sleep 0.5; }
stop_sw() { [ -n "$SW_PID" ] && kill -TERM "$SW_PID" 2>/dev/null; for _ in $(seq 150); do kill -0 "$SW_PID" 2>/dev/null || break; sleep 0.1; done; SW_PID=""; }
cleanup() { stop_vms; stop_sw; rm -rf "$DIR"; }
trap 'cleanup; exit 130' INT TERM

(cd "$ROOT" && cargo build --release -q -p xswitch) || exit 1
"$ROOT/scripts/guest-image" || exit 1
GUEST=$ROOT/target/guest
case $ACCEL in
  kvm) CPU=(-accel kvm -cpu host,-arch-capabilities) ;;
  *) CPU=(-accel tcg -cpu qemu64) ;;
esac

cat > "$DIR/sw.toml" <<EOF
[switch]
workers = 1
frames = 16384
idle = "adaptive"
[metrics]
enabled = false
[control]
socket = "$DIR/ctl.sock"
[ports.vm1]
kind = "tenant"
vhost_user = { socket = "$DIR/vm1.sock", mode = "server" }
[ports.vm2]
kind = "tenant"
vhost_user = { socket = "$DIR/vm2.sock", mode = "server" }
[tenants.bench]
attach = [{ port = "vm1" }, { port = "vm2" }]
EOF

vm() { # $1 name, $2 MAC, $3 kernel arguments, $4 device options
  qemu-system-x86_64 "${CPU[@]}" -machine q35 -smp 1 -m 256 -nodefaults -no-user-config \
    -display none -no-reboot -serial "file:$DIR/console-$1.log" -kernel "$GUEST/vmlinuz" \
    -initrd "$GUEST/initrd.gz" -append "console=ttyS0 quiet panic=-1 $3" \
    -object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem \
    -chardev "socket,id=c0,path=$DIR/$1.sock" -netdev vhost-user,id=n0,chardev=c0 \
    -device "virtio-net-pci,netdev=n0,mac=$2,vectors=0$4" 2> "$DIR/qemu-$1.log" &
}

wait_for() { # $1 file, $2 text, $3 seconds
  for _ in $(seq $(($3 * 5))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.2; done
  log "no '$2' in $1:"; tail -5 "$1" >&2; return 1
}

one() { # $1 case: offloads | none | base
  local dev="" bin="$ROOT/target/release/xswitch"
  [ "$1" = none ] && dev=",csum=off,gso=off,host_tso4=off,host_tso6=off,guest_tso4=off,guest_tso6=off"
  [ "$1" = base ] && bin=$BASE
  rm -f "$DIR"/console-*.log
  "$bin" run -c "$DIR/sw.toml" 2> "$DIR/sw.log" & SW_PID=$!
  wait_for "$DIR/sw.log" switching 10 || return 1
  vm vm1 52:54:00:00:0b:01 "xs.ip=10.77.7.1/24" "$dev"
  wait_for "$DIR/console-vm1.log" "xs: ready" 90 || return 1
  vm vm2 52:54:00:00:0b:02 "xs.ip=10.77.7.2/24 xs.client=10.77.7.1 xs.time=$DUR" "$dev"
  wait_for "$DIR/console-vm2.log" "xs: done" $((DUR + 120)) || return 1
  local mbit
  mbit=$(awk '/receiver/ { for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") print $(i - 1) }' "$DIR/console-vm2.log")
  stop_vms
  stop_sw
  local line
  line=$(grep "vm2 queue 0: .*packets from the guest" "$DIR/sw.log")
  local pkts segs whole
  pkts=$(echo "$line" | sed -E 's/.*vm2 queue 0: ([0-9]+) packets from the guest.*/\1/')
  segs=$(echo "$line" | sed -E 's/.*offloads: ([0-9]+) large TCP segments.*/\1/')
  whole=$(echo "$line" | grep -oE '[0-9]+ taken whole' | cut -d' ' -f1)
  printf "%s\t%s\t%s\t%s\t%s\t%s\n" "$r" "$1" "${mbit:-0}" "${pkts:-0}" "${segs:-0}" "${whole:-0}" | tee -a "$RES"
}

printf "round\tcase\tmbit_s\tpackets_from_vm2\tlarge_segments_cut\ttaken_whole\n" | tee "$RES"
CASES="offloads none"
[ -n "$BASE" ] && CASES="offloads base none"
for r in $(seq "$ROUNDS"); do
  for c in $CASES; do
    one "$c" || { log "round $r $c failed"; stop_vms; stop_sw; }
  done
done
python3 - "$RES" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
by = {}
for r, c, mbit, *_ in rows:
    by.setdefault(c, []).append(float(mbit))
med = {c: statistics.median(v) for c, v in by.items()}
for c, m in med.items():
    print(f"{c}: median {m:.0f} Mbit/s over {len(by[c])} rounds")
if med.get("none"):
    print(f"offloads / none: {med['offloads'] / med['none']:.2f}x")
if med.get("base"):
    print(f"offloads / base (the commit before, offloads): {med['offloads'] / med['base']:.2f}x")
EOF
log "results in $RES"
cleanup
