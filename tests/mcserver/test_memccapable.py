"""Runs libmemcached's `memccapable -a` (text-protocol conformance) against a fresh server.

Run: MCSERVER_BIN=build/bin/mcserver-slab-epoll /usr/bin/python3 test_memccapable.py
"""
import os
import subprocess
import sys

from mcutil import start_mcserver

BIN = os.environ.get("MCSERVER_BIN", "build/bin/mcserver-slab-epoll")


def main():
    srv = start_mcserver(BIN, "-t", "2")
    try:
        r = subprocess.run(["memccapable", "-a", "-t", "5", "-h", "127.0.0.1", "-p", str(srv.port)],
                           capture_output=True, text=True, timeout=120)
    finally:
        rc = srv.stop()
    out = r.stdout + r.stderr
    passed = out.count("[pass]")
    ok = r.returncode == 0 and "All tests passed" in out and passed >= 27 and rc == 0
    print("memccapable -a %s: %d passed, rc %d%s" % (os.path.basename(BIN), passed, r.returncode,
                                                   "" if ok else "\n" + out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
