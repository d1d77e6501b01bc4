#!/usr/bin/env python3
"""bench/profile-shares.py FOLDED... -- the shares of a profile that bench/RESULTS.md quotes.

Reads the folded stacks bench/profile.sh writes (bench/profiles/NAME.folded) and prints, per
file, the share of samples whose stack holds each piece (inclusive), plus a few self-time
rows. One table for every profile, so before/after numbers are counted the same way.
"""
import re
import sys

INCLUSIVE = [
    ("kernel: writev (to client and upstream)", r"writev"),
    ("kernel: recvfrom", r"recvfrom"),
    ("epoll_wait", r"epoll_wait"),
    ("downstream HTTP/1 server connection (hyper)", r"dispatch::Server<"),
    ("upstream HTTP/1 client connection task (hyper)", r"dispatch::Client<"),
    # The legacy client also spawns the connection task: counted above, not here.
    ("hyper_util legacy pooled client (checkout, put-back, its channel)", r"hyper_util::client::legacy::client", r"dispatch::Client<"),
    ("our request path (forward::handle, upstream send included)", r"outrigger_proxy::forward::handle"),
    ("HeaderMap clone and drop", r"HeaderMap<[^;]*>::clone|drop_in_place<http::header::map::HeaderMap"),
    ("metrics and stats (telemetry)", r"outrigger_proxy::telemetry"),
    ("clock_gettime", r"clock_gettime"),
]
SELF = [
    ("allocator (self)", r"^(_?mi_|malloc|free|realloc|cfree|__libc_)"),
    ("memmove/memcpy (self)", r"mem(move|cpy)"),
]


def shares(path):
    total = 0
    inc = [0] * len(INCLUSIVE)
    own = [0] * len(SELF)
    for line in open(path, encoding="utf-8", errors="replace"):
        stack, _, n = line.rstrip("\n").rpartition(" ")
        if not n.isdigit():
            continue
        n = int(n)
        total += n
        leaf = stack.rsplit(";", 1)[-1]
        for i, (_, pat, *unless) in enumerate(INCLUSIVE):
            if re.search(pat, stack) and not (unless and re.search(unless[0], stack)):
                inc[i] += n
        for i, (_, pat) in enumerate(SELF):
            if re.search(pat, leaf):
                own[i] += n
    return total, inc, own


def main():
    files = sys.argv[1:]
    if not files:
        sys.exit(__doc__)
    results = [shares(f) for f in files]
    print("| piece | " + " | ".join(files) + " |")
    print("|---|" + "---|" * len(files))
    for i, (name, *_) in enumerate(INCLUSIVE):
        print(f"| {name} | " + " | ".join(f"{100 * r[1][i] / max(r[0], 1):.1f} %" for r in results) + " |")
    for i, (name, _) in enumerate(SELF):
        print(f"| {name} | " + " | ".join(f"{100 * r[2][i] / max(r[0], 1):.1f} %" for r in results) + " |")


if __name__ == "__main__":
    main()
