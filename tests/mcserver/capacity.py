"""How many items a server holds in the same memory limit, every one read back and checked.

Loads N items (32-byte keys, 100-byte values, flags 0, no expiry) into each server started
with `-m MB`, far more than fit, then reads every key back: the items held are the hits; a
hit whose value differs from what was written counts as corrupt (must be 0).

usage: /usr/bin/python3 tests/mcserver/capacity.py [--mb 64] [--items 1000000] BIN...
       (memcached is measured too when installed; BIN are mcserver binaries)
"""
import argparse
import os
import shutil
import sys
import threading

from mcutil import Conn, start_mcserver, start_memcached


def key(i):
    return b"key:%028d" % i  # 32 bytes


def value(i):
    return (b"%010d|" % i) * 9 + b"%01d" % (i % 10)  # 100 bytes, different for every i


def load(port, n):
    c = Conn(port, timeout=60)
    batch = 2000

    refused = [0]

    def drain(count):
        for _ in range(count):
            ln = c.line()
            if ln == b"SERVER_ERROR out of memory storing object\r\n":
                refused[0] += 1  # allowed (memcached does it too), counted and reported
            elif ln != b"STORED\r\n":
                raise RuntimeError("set failed: %r" % ln)

    for start in range(0, n, batch):
        reqs = b"".join(b"set %s 0 0 100\r\n%s\r\n" % (key(i), value(i))
                        for i in range(start, min(n, start + batch)))
        t = threading.Thread(target=c.send, args=(reqs,))
        t.start()
        drain(min(n, start + batch) - start)
        t.join()
    c.close()
    return refused[0]


def read_back(port, n):
    c = Conn(port, timeout=60)
    hits = corrupt = 0
    batch = 100
    for start in range(0, n, batch):
        ids = range(start, min(n, start + batch))
        c.send(b"get " + b" ".join(key(i) for i in ids) + b"\r\n")
        while True:
            ln = c.line()
            if ln == b"END\r\n":
                break
            _, k, flags, nbytes = ln.split()
            data = c.exactly(int(nbytes) + 2)[:-2]
            i = int(k[4:])
            hits += 1
            if data != value(i) or flags != b"0":
                corrupt += 1
    c.close()
    return hits, corrupt


def measure(name, srv, n):
    try:
        rss0 = srv.rss_kb()
        refused = load(srv.port, n)
        hits, corrupt = read_back(srv.port, n)
        rss1 = srv.rss_kb()
    finally:
        srv.stop()
    print("%-26s held %8d of %d items, corrupt %d, sets refused %d, RSS %d -> %d MiB"
          % (name, hits, n, corrupt, refused, rss0 >> 10, rss1 >> 10), flush=True)
    return hits, corrupt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--items", type=int, default=1000000)
    ap.add_argument("bins", nargs="+")
    a = ap.parse_args()
    results = {}
    bad = 0
    if shutil.which("memcached"):
        results["memcached"], c = measure("memcached -m %d" % a.mb,
                                          start_memcached("-m", str(a.mb), "-t", "1"), a.items)
        bad += c
    for b in a.bins:
        name = os.path.basename(b)
        results[name], c = measure("%s -m %d" % (name, a.mb),
                                   start_mcserver(b, "-m", str(a.mb), "-t", "1"), a.items)
        bad += c
    if "memcached" in results:
        for name, held in results.items():
            if name != "memcached":
                print("%-26s %.3fx memcached's item count" % (name, held / results["memcached"]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
