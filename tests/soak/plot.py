#!/usr/bin/env python3
"""Plots a soak's samples as one SVG: RSS (with each server's bound) and open fds over time.

    plot.py --out build/soak/soak.svg build/soak/mcserver-p99-uring.csv build/soak/mcserver-slab-epoll.csv

Each CSV is what soak.py writes per server (t_s,rss_kb,fds,injector_conns,half_sent_bytes,
rss_bound_kb); the server's name is the file's name. Stdlib only: the SVG is written by hand
(two panels of polylines), like the parity plots.
"""

import argparse
import csv
import math
import os
import sys
from xml.sax.saxutils import escape

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
WIDTH, PANEL_H = 900, 300
LEFT, RIGHT, TOP, GAP, BOTTOM = 80, 230, 60, 70, 50


def read_samples(path):
    """The columns of one soak CSV as lists of floats; refuses a file without samples."""
    cols = {"t_s": [], "rss_kb": [], "fds": [], "rss_bound_kb": []}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for k in cols:
                cols[k].append(float(row[k]))
    if not cols["t_s"]:
        raise ValueError("%s: no samples" % path)
    return cols


def nice_max(v):
    """A round axis maximum at or above v (a power of ten times 1, 1.5, 2, ... 8)."""
    if v <= 0:
        return 1.0
    p = 10 ** math.floor(math.log10(v))
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * p >= v:
            return m * p
    return 10 * p


def panel(out, top, title, unit, t_max, y_max, series):
    """One panel: axes with five ticks each way, then each (label, color, dash, xs, ys) line."""
    pw, ph = WIDTH - LEFT - RIGHT, PANEL_H - 40

    def px(t):
        return LEFT + t / t_max * pw

    def py(v):
        return top + ph - v / y_max * ph

    out.append('<text x="%d" y="%d" font-weight="bold">%s</text>' % (LEFT, top - 10, escape(title)))
    for i in range(6):
        y = py(y_max * i / 5)
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (LEFT, y, LEFT + pw, y))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%g</text>' % (LEFT - 6, y + 4, round(y_max * i / 5, 3)))
        x = px(t_max * i / 5)
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>' % (x, top, x, top + ph))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%g</text>' % (x, top + ph + 16, round(t_max * i / 5)))
    out.append('<text x="%d" y="%d" text-anchor="middle">seconds</text>' % (LEFT + pw // 2, top + ph + 32))
    out.append('<text x="20" y="%d" transform="rotate(-90 20 %d)" text-anchor="middle">%s</text>'
               % (top + ph // 2, top + ph // 2, escape(unit)))
    for n, (label, color, dash, xs, ys) in enumerate(series):
        pts = " ".join("%.1f,%.1f" % (px(x), py(y)) for x, y in zip(xs, ys))
        extra = ' stroke-dasharray="6,4"' if dash else ""
        out.append('<polyline fill="none" stroke="%s" stroke-width="1.5"%s points="%s"/>' % (color, extra, pts))
        ly = top + 14 + 18 * n
        out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>'
                   % (LEFT + pw + 12, ly - 4, LEFT + pw + 36, ly - 4, color, extra))
        out.append('<text x="%d" y="%d">%s</text>' % (LEFT + pw + 42, ly, escape(label)))


def render(runs, title):
    """The SVG text for runs: a list of (server name, samples)."""
    t_max = max(max(s["t_s"]) for _, s in runs)
    rss_max = nice_max(max(max(s["rss_kb"] + s["rss_bound_kb"]) for _, s in runs) / 1024)
    fd_max = nice_max(max(max(s["fds"]) for _, s in runs))
    height = TOP + 2 * PANEL_H + GAP + BOTTOM
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
           'font-size="12">' % (WIDTH, height),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="24" font-size="16" font-weight="bold">%s</text>' % (LEFT, escape(title))]
    rss, fds = [], []
    for i, (name, s) in enumerate(runs):
        color = COLORS[i % len(COLORS)]
        mib = [v / 1024 for v in s["rss_kb"]]
        bound = [v / 1024 for v in s["rss_bound_kb"]]
        rss.append((name, color, False, s["t_s"], mib))
        rss.append((name + " bound", color, True, s["t_s"], bound))
        fds.append((name, color, False, s["t_s"], s["fds"]))
    panel(out, TOP + 20, "RSS (dashed: the pass bound)", "MiB", t_max, rss_max, rss)
    panel(out, TOP + 20 + PANEL_H + GAP, "open file descriptors", "fds", t_max, fd_max, fds)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="the SVG to write")
    ap.add_argument("--title", default="Soak under faults: RSS and open fds")
    ap.add_argument("csvs", nargs="+", help="soak.py's SERVER.csv files")
    args = ap.parse_args()
    try:
        runs = [(os.path.splitext(os.path.basename(p))[0], read_samples(p)) for p in args.csvs]
    except (OSError, ValueError, KeyError) as e:
        print("plot.py: %s" % e, file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(render(runs, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
