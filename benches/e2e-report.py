#!/usr/bin/env python3
"""Turns the TSV of benches/e2e.sh into a markdown section and puts it into
docs/PERFORMANCE.md between the markers `<!-- e2e:begin -->` and `<!-- e2e:end -->`.

Usage: e2e-report.py RESULTS.tsv DOC.md [COMMAND]   (prints the section; rewrites DOC.md)
"""
import re
import sys


def fields(text):
    """`a=1 b=2\tc=3` -> {'a': '1', 'b': '2', 'c': '3'}"""
    return dict(re.findall(r"([\w.-]+)=([^\s\t]+)", text))


def num(v, fmt="{:.3f}"):
    try:
        return fmt.format(float(v))
    except (TypeError, ValueError):
        return "–"


def run_losses(log):
    """Per-run UDP loss from the harness log: {(dut, flows): [percent, ...]} (last run wins)."""
    losses = {}
    try:
        lines = open(log).read().splitlines()
    except OSError:
        return losses
    pat = re.compile(r"\s(\S+) udp flows=(\d+) run(\d+): [^:]*: (\d+) (\d+) (\d+)")
    for line in lines:
        m = pat.search(line)
        if not m:
            continue
        dut, flows, run, off, _, dl = m.groups()
        key = (dut, flows)
        if run == "1":
            losses[key] = []
        off, dl = float(off), float(dl)
        losses.setdefault(key, []).append(100.0 * max(off - dl, 0.0) / off if off else 0.0)
    return losses


def section(tsv, command):
    losses = run_losses(tsv + ".log")
    header, rows = "", {}
    for line in open(tsv):
        line = line.rstrip("\n")
        if line.startswith("#"):
            header = line.lstrip("# ")
            rows = {}  # the last run in the file wins
            continue
        parts = line.split("\t", 2)
        if len(parts) == 3:
            rows.setdefault(parts[0], {})[parts[1]] = parts[2]
    out = [f"Run of {header}, command `{command}`:", ""]
    out.append("Delivered and offered rates are medians over the runs; the loss is taken per run.")
    out.append("")
    out.append("| switch | UDP 64 B, 1 flow: delivered of offered | 1 000 flows | TCP 1 stream "
               "| sockperf one-way p50 / p99 | busy cycles per packet: UDP 1 flow / 1 000 flows / latency / TCP |")
    out.append("|---|---|---|---|---|---|")
    for dut, m in rows.items():
        def udp(flows):
            f = fields(m.get(f"udp64_flows{flows}", ""))
            off, dl = f.get("offered_pps"), f.get("delivered_pps")
            if not off or not dl:
                return "–"
            runs = sorted(losses.get((dut, flows), []))
            if runs:
                lost = f"loss per run: median {runs[len(runs) // 2]:.3f} %, worst {runs[-1]:.3f} %"
            else:
                lost = "loss per run not logged"
            return f"{float(dl) / 1e6:.4f} of {float(off) / 1e6:.4f} Mpps ({lost})"
        tcp = fields(m.get("tcp_1stream", "")).get("median_Mbps")
        sp = fields(m.get("sockperf_us", ""))
        busy = []
        for phase in ("udp1", "udpk", "lat", "tcp"):
            b = m.get(f"{phase}_busy", "")
            busy.append(b.split(" ")[0] if b and b[0].isdigit() else "–")
        out.append(
            f"| {dut} | {udp('1')} | {udp('1000')} "
            f"| {num(tcp, '{:.0f}')} Mbit/s | {num(sp.get('p50'), '{:.1f}')} / {num(sp.get('p99'), '{:.1f}')} µs "
            f"| {' / '.join(busy) if dut != 'bridge' else '–'} |")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    tsv, doc = sys.argv[1], sys.argv[2]
    command = sys.argv[3] if len(sys.argv) > 3 else "benches/e2e.sh"
    body = section(tsv, command)
    print(body)
    text = open(doc).read()
    begin, end = "<!-- e2e:begin -->", "<!-- e2e:end -->"
    if begin not in text or end not in text:
        sys.exit(f"{doc}: markers {begin} / {end} not found; section not written")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    open(doc, "w").write(f"{head}{begin}\n{body}{end}{tail}")


if __name__ == "__main__":
    main()
