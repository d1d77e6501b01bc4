"""Reads bench/soak.sh's samples and up's summary: per process, RSS after warm-up and at the end,
the least-squares RSS slope after warm-up (KiB per 10 minutes), fd min and max. Fails (exit 1) when
a process died during the soak, a slope is 1 MiB per 10 min or more, or a request failed."""
import argparse
import collections
import csv
import json
import sys

GOAL_KIB_PER_10MIN = 1024


def seconds(text):
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def slope(points):
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((t - mx) ** 2 for t, _ in points)
    return 0.0 if den == 0 else sum((t - mx) * (v - my) for t, v in points) / den


def main():
    p = argparse.ArgumentParser()
    p.add_argument("samples")
    p.add_argument("summary")
    p.add_argument("--warmup", default=None)
    a = p.parse_args()
    rows = list(csv.DictReader(open(a.samples)))
    if not rows:
        print("no samples", file=sys.stderr)
        return 1
    end = max(int(r["time_s"]) for r in rows)
    warmup = seconds(a.warmup) if a.warmup else min(300.0, end / 6)
    by = collections.defaultdict(list)
    for r in rows:
        by[(r["role"], r["pid"])].append((int(r["time_s"]), int(r["rss_kib"]), int(r["fds"])))
    bad = []
    print(f"warm-up {warmup:.0f} s, {end} s sampled; goal: RSS slope under {GOAL_KIB_PER_10MIN} KiB per 10 min")
    print("| process | RSS after warm-up (KiB) | RSS at end (KiB) | slope (KiB / 10 min) | fds min-max |")
    print("|---|---|---|---|---|")
    for (role, pid), pts in sorted(by.items()):
        last = pts[-1][0]
        if role != "up" and last < end - 20:
            bad.append(f"{role} (pid {pid}) stopped being sampled at {last} s of {end}")
        after = [(t, rss) for t, rss, _ in pts if t >= warmup]
        s = slope(after) * 600
        fds = [f for _, _, f in pts]
        first = after[0][1] if after else pts[0][1]
        flag = ""
        if s >= GOAL_KIB_PER_10MIN and len(after) >= 3:
            flag = " (over the goal)"
            bad.append(f"{role}: RSS grows {s:.0f} KiB per 10 min")
        print(f"| {role} | {first} | {pts[-1][1]} | {s:+.0f}{flag} | {min(fds)}-{max(fds)} |")
    try:
        summary = json.load(open(a.summary))
    except (OSError, ValueError) as e:
        bad.append(f"no summary from up: {e}")
        summary = {}
    for kind in ("orders", "browsing", "logins"):
        o = summary.get(kind, {})
        print(f"{kind}: {json.dumps(o)}")
        if o.get("failed", 0):
            bad.append(f"{o['failed']} {kind} failed")
    for b in bad:
        print("FAIL:", b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
