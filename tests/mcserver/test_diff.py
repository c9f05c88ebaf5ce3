"""Differential test: random command sequences sent to the real memcached and to mcserver,
replies compared byte for byte. Only version and stats replies are exempt; CAS uniques are
compared by role (each server's own value is tracked and used), not by number.

Run: MCSERVER_BIN=... DIFF_SEED=1 DIFF_COMMANDS=3000 /usr/bin/python3 test_diff.py
"""
import os
import random
import re
import sys
import threading
import time

from mcutil import Conn, start_mcserver, start_memcached

BIN = os.environ.get("MCSERVER_BIN", "build/bin/mcserver-slab-epoll")
SEED = int(os.environ.get("DIFF_SEED", "1"))
COMMANDS = int(os.environ.get("DIFF_COMMANDS", "3000"))
SENTINEL = b"version\r\n"
# Commands sent per round trip. memcached 1.6.18 was seen to stall on a long pipelined batch
# split by its 16 KiB reads in the middle of a command, so the default is lock-step.
BATCH = int(os.environ.get("DIFF_BATCH", "1"))

KEYS = [b"a", b"b", b"key3", b"k" * 250, b"n1", b"n2", b"x\x01y", b"long" * 20]
BADKEY = b"z" * 251


class Side:
    """One server and what the random generator knows about it (its own cas values)."""

    def __init__(self, server):
        self.server = server
        self.conn = Conn(server.port, timeout=10)
        self.cas = {}

    def exchange(self, payloads):
        """Sends each payload followed by the sentinel; returns the replies of each."""
        # send from a thread: replies must be read while a large batch is still going out
        sender = threading.Thread(target=self.conn.send,
                                  args=(b"".join(p + SENTINEL for p in payloads),))
        sender.start()
        out = []
        for _ in payloads:
            r = b""
            while True:
                ln = self.conn.line()
                if ln.startswith(b"VERSION "):
                    break
                r += ln
                if ln.startswith(b"VALUE "):
                    parts = ln.split()
                    r += self.conn.exactly(int(parts[3]) + 2)
                    if len(parts) == 5:
                        self.cas[parts[1]] = int(parts[4])
            out.append(r)
        sender.join()
        return out


CAS_RE = re.compile(rb"^(VALUE \S+ \d+ \d+) \d+\r\n", re.M)


def normalize(reply):
    return CAS_RE.sub(rb"\1 <cas>\r\n", reply)


def value(rnd):
    kind = rnd.random()
    if kind < 0.35:
        return b"%d" % rnd.choice([0, 1, 9, 10, 99, 100, 12345, 2**32, 2**64 - 1, 2**64 - 2])
    if kind < 0.45:
        return rnd.choice([b"", b" 12", b"-1", b"12a", b"abc", b"1" * 21, b"007"])
    n = rnd.choice([1, 2, 5, 30, 100, 1000, 5000])
    return bytes(rnd.randrange(256) for _ in range(n)).replace(b"\r\n", b"..")


def exptime(rnd):
    return rnd.choice([0, 0, 0, 1000, 2592000, int(time.time()) + 5000, int(time.time()) - 100,
                       -1, 4294967296 + 5000])


def command(rnd):
    """One random request: (bytes for memcached-side, bytes builder taking a side)."""
    key = rnd.choice(KEYS) if rnd.random() > 0.02 else BADKEY
    noreply = b" noreply" if rnd.random() < 0.15 else b""
    r = rnd.random()
    if r < 0.35:
        cmd = rnd.choice([b"set", b"set", b"add", b"replace", b"append", b"prepend", b"cas"])
        v = value(rnd)
        flags = rnd.choice([0, 0, 1, 4294967295, 123])
        n = len(v)
        if rnd.random() < 0.03 and 0 < n <= 100:
            # bad data chunk or bad length; never longer than the data, which would eat the
            # sentinel that delimits replies
            n = rnd.choice([n - 1, -1])
        extra = b""
        if cmd == b"cas":
            how = rnd.random()
            if how < 0.6:
                extra = None  # this side's last seen cas for the key
            else:
                extra = b" %d" % rnd.choice([0, 1, 99999999999])
        head_flags = b"%d" % flags if rnd.random() > 0.02 else b"abc"

        def build(side, cmd=cmd, key=key, v=v, n=n, extra=extra, head_flags=head_flags):
            if extra is None:
                extra = b" %d" % side.cas.get(key, 424242)
            return (b"%s %s %s %d %d%s%s\r\n%s\r\n"
                    % (cmd, key, head_flags, exptime(random.Random(len(v) + n)), n, extra,
                       noreply, v))
        return build
    if r < 0.6:
        cmd = rnd.choice([b"get", b"gets", b"gat", b"gats"])
        keys = b" ".join(rnd.choice(KEYS) for _ in range(rnd.randint(1, 4)))
        if rnd.random() < 0.02:
            keys += b" " + BADKEY
        if cmd.startswith(b"gat"):
            keys = b"%d %s" % (rnd.choice([0, 1000, -1]), keys)
        line = cmd + b" " + keys + b"\r\n"
        return lambda side: line
    if r < 0.72:
        cmd = rnd.choice([b"incr", b"decr"])
        delta = rnd.choice([b"0", b"1", b"7", b"18446744073709551615", b"18446744073709551616",
                            b"-1", b"abc", b"100"])
        line = b"%s %s %s%s\r\n" % (cmd, key, delta, noreply)
        return lambda side: line
    if r < 0.8:
        line = rnd.choice([b"delete %s%s\r\n" % (key, noreply), b"delete %s 0\r\n" % key,
                           b"delete %s 5\r\n" % key])
        return lambda side: line
    if r < 0.87:
        line = b"touch %s %d%s\r\n" % (key, rnd.choice([0, 1000, -1]), noreply)
        return lambda side: line
    if r < 0.89:
        line = rnd.choice([b"flush_all\r\n", b"flush_all 0\r\n", b"flush_all noreply\r\n"])
        return lambda side: line
    line = rnd.choice([
        b"bogus\r\n", b"GET a\r\n", b"\r\n", b"set a 0 0\r\n", b"incr a\r\n",
        b"verbosity 1\r\n", b"verbosity\r\n", b"verbosity x noreply\r\n", b"touch a\r\n",
        b"stats nosuch\r\n", b"flush_all x\r\n", b"slabs automove 1\r\n", b"slabs automove 3\r\n",
        b"slabs automove x\r\n", b"slabs automove\r\n", b"slabs automove 0 noreply\r\n",
        b"slabs automove ratio 0.5\r\n", b"slabs automove ratio\r\n", b"verbosity -1\r\n",
        b"verbosity 1 2\r\n", b"verbosity 1 2 3\r\n", b"cas a 0 0 1\r\n", b"get\r\n", b"gat\r\n",
        b"delete\r\n", b"set a 0 0 5\nhello\r\n", b"get a\n", b"set a 99999999999999999999 0 1\r\nx\r\n",
        b"set a 0 0 2097152\r\n" + b"q" * 2097152 + b"\r\n",
    ])
    return lambda side: line


def main():
    # background LRU threads briefly pin items, which makes memcached choose between in-place
    # and new-item incr at random; without them its replies are deterministic
    mc = start_memcached("-m", "64", "-t", "1", "-o", "no_lru_crawler,no_lru_maintainer")
    ours = start_mcserver(BIN, "-m", "64", "-t", "2", *os.environ.get("DIFF_EXTRA_ARGS", "").split())
    failures = 0
    try:
        a, b = Side(mc), Side(ours)
        rnd = random.Random(SEED)
        done = 0
        history = []
        while done < COMMANDS:
            builders = [command(rnd) for _ in range(min(BATCH, COMMANDS - done))]
            pa = [f(a) for f in builders]
            pb = [f(b) for f in builders]
            ra, rb = a.exchange(pa), b.exchange(pb)
            for req, x, y in zip(pb, ra, rb):
                history.append(req)
                if normalize(x) != normalize(y):
                    failures += 1
                    if failures <= 5:
                        print("MISMATCH after %d commands\n  request:   %r\n  memcached: %r\n"
                              "  mcserver:  %r" % (done, req[:200], x[:300], y[:300]))
            done += len(builders)
            if failures > 20:
                break
        if not ours.alive():
            print("mcserver died")
            failures += 1
        print("diff %s: %d commands, seed %d, %d mismatches"
              % (os.path.basename(BIN), done, SEED, failures))
    finally:
        mc.stop()
        rc = ours.stop()
        if rc != 0:
            print("mcserver exit code %r on SIGTERM" % rc)
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
