"""What the client scripts share: addresses from cluster.json, and failing with a message."""

import sys


def hostport(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


def check(cond, what):
    if not cond:
        print("FAILED:", what, file=sys.stderr)
        sys.exit(1)
