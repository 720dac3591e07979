#!/usr/bin/env python3
"""Per-round QuantKit / llama.cpp ratios from peer_ab.sh output (a file or stdin): each llama.cpp run is paired
with the QuantKit runs of the same weights next to it (same round); prints the median ratio per (dtype, batch).

Usage: bash Tools/peer_llamacpp/peer_ab.sh 6 /work/peer > out.txt; python3 Tools/peer_llamacpp/ratios.py out.txt
"""
import statistics
import sys


def family(tool, weights):
    """Which weights a line ran: QuantKit dtype or llama.cpp model file, mapped to one name."""
    if tool == "quantkit" and not weights.startswith("model-"):
        return {"w4g32a8": "q40", "w4g32": "q40", "w8": "q80"}.get(weights, weights)
    return weights.rsplit("-", 2)[-2] if weights.endswith("pure") else weights.rsplit("-", 1)[-1]


lines = [l.split() for l in (open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin)
         if l.startswith(("quantkit", "llamacpp"))]
runs = []  # consecutive lines of the same weights
for l in lines:
    f = family(l[0], l[1])
    if runs and runs[-1][0] == f and not (l[0] == "llamacpp" and any(x[0] == "llamacpp" for x in runs[-1][1])):
        runs[-1][1].append(l)
    else:
        runs.append((f, [l]))
ratios, rates = {}, {}
for _, block in runs:
    peers = [b for b in block if b[0] == "llamacpp"]
    if len(peers) != 1:
        continue
    for b in block:
        if b[0] == "quantkit":
            ratios.setdefault((b[1], b[2]), []).append(float(b[3]) / float(peers[0][3]))
            rates.setdefault((b[1], b[2]), []).append(float(b[3]))
for key in sorted(ratios):
    r = ratios[key]
    print(f"{key[0]:>8} {key[1]:>5}  median ratio {statistics.median(r):.2f}  quantkit median "
          f"{statistics.median(rates[key]):.0f} tok/s  rounds {len(r)}  ratios {' '.join(f'{x:.2f}' for x in r)}")
