#!/usr/bin/env python3
"""Verdicts for benchmarks that run each case several times: per case and metric, the median,
min and max of each side, the ratio of medians (ours / peer), and whether the spread is too
wide to trust.

Input (a file, or - for stdin): one measurement per line, tab-separated,

    CASE <TAB> SIDE <TAB> METRIC <TAB> VALUE

e.g. `git whole repo	ours	s	1.234`. Cases and metrics print in the order they first
appear. A case with one side only prints without a ratio.

    stats.py [--ours ours] [--peer peer] [--wide 1.3] [--title TEXT] FILE

Exit status 0; 2 for unusable input. A spread (max/min of one side's runs) over --wide is
flagged WIDE, and the last line says how many cases were: a ratio from such runs cannot tell a
regression from the machine's luck (page cache, other load).
"""

import argparse
import statistics
import sys


def summary(values):
    """(runs, median, min, max) of a list of numbers."""
    return len(values), statistics.median(values), min(values), max(values)


def spread(values):
    """max/min, or inf when the smallest is 0 and the largest is not."""
    lo, hi = min(values), max(values)
    if lo > 0:
        return hi / lo
    return 1.0 if hi == lo else float("inf")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file")
    p.add_argument("--ours", default="ours", help="the side the ratio puts on top (default: ours)")
    p.add_argument("--peer", default="peer", help="the side it is compared with (default: peer)")
    p.add_argument("--wide", type=float, default=1.3, help="max/min over which a side's runs are too spread (1.3)")
    p.add_argument("--title", default="", help="a line printed above the table")
    args = p.parse_args()

    data = {}  # (case, metric) -> side -> [values]
    order = []
    src = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    for n, line in enumerate(src, 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 4:
            print(f"stats.py: line {n}: want CASE<TAB>SIDE<TAB>METRIC<TAB>VALUE, got {line!r}", file=sys.stderr)
            sys.exit(2)
        case, side, metric, value = parts
        try:
            v = float(value)
        except ValueError:
            print(f"stats.py: line {n}: value {value!r} is not a number", file=sys.stderr)
            sys.exit(2)
        key = (case, metric)
        if key not in data:
            data[key] = {}
            order.append(key)
        data[key].setdefault(side, []).append(v)
    if not order:
        print("stats.py: no measurements", file=sys.stderr)
        sys.exit(2)

    if args.title:
        print(args.title)
    width = max(28, *(len(c) for c, _ in order))
    mw = max(6, *(len(m) for _, m in order))
    print(
        f"{'case':<{width}} {'metric':<{mw}} {'side':<6} {'runs':>4} {'median':>9} {'min':>9} {'max':>9} "
        f"{'max/min':>7}  ratio of medians {args.ours}/{args.peer}"
    )
    wide = []
    for case, metric in order:
        sides = data[(case, metric)]
        names = [s for s in (args.ours, args.peer) if s in sides] + [
            s for s in sides if s not in (args.ours, args.peer)
        ]
        ratio = ""
        if args.ours in sides and args.peer in sides:
            peer_median = statistics.median(sides[args.peer])
            if peer_median > 0:
                r = statistics.median(sides[args.ours]) / peer_median
                ratio = f"{r:.2f}" if r >= 0.01 else f"{r:.2g}"
        for i, side in enumerate(names):
            runs, med, lo, hi = summary(sides[side])
            sp = spread(sides[side])
            flag = ""
            if sp > args.wide:
                flag = "  WIDE"
                wide.append(f"{case} ({side}, {metric})")
            label = case if i == 0 else ""
            m = metric if i == 0 else ""
            r = ratio if i == 0 else ""
            print(
                f"{label:<{width}} {m:<{mw}} {side:<6} {runs:>4} {med:>9.3f} {lo:>9.3f} {hi:>9.3f} "
                f"{sp:>7.2f}  {r}{flag}"
            )
    if wide:
        print(
            f"WIDE: {len(wide)} spread(s) over max/min {args.wide}, too wide to trust their ratio: "
            + "; ".join(wide)
        )
    else:
        print(f"every side's runs within max/min {args.wide}")


if __name__ == "__main__":
    main()
