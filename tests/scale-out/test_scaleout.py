#!/usr/bin/env python3
"""mcserver scaled out: three mcserver builds behind nutcracker (twemproxy, ketama, auto-eject),
behind pymemcache's HashClient (client-side consistent hashing), and behind libmemcached's
command-line tools.

Checks: every classic command the proxy forwards, with values verified on the server that holds
them; keys spread over all three servers; each server in turn killed with SIGKILL under traffic
(errors only for its keys, at most server_failure_limit of them per ejection, the first error
window over within server_retry_timeout, nothing on a live server lost or wrong), restarted, and
back in the ring with its old keys. Measured figures are printed.

Last, a tiny run of `p99-parity --scenarios proxy` must give figures for every variant.

usage: test_scaleout.py BIN_DIR   (needs nutcracker, pymemcache and libmemcached-tools)
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import scaleout
from scaleout import Backend, Proxy

BIN_DIR = None
# One build per storage and per I/O module, so every combination of the two modules sits behind
# the proxy next to a different one.
BUILDS = ("mcserver-slab-epoll", "mcserver-p99-epoll", "mcserver-p99-uring")
RETRY_TIMEOUT_MS = 1500
FAILURE_LIMIT = 2


def say(msg):
    print("scale-out: " + msg, flush=True)


# --- raw protocol ------------------------------------------------------------------------------

def store(conn, verb, key, value, flags=0, exptime=0, cas=None, noreply=False):
    extra = b"" if cas is None else b" %d" % cas
    if noreply:
        extra += b" noreply"
    conn.send(b"%s %s %d %d %d%s\r\n%s\r\n" % (verb, key, flags, exptime, len(value), extra, value))
    return None if noreply else conn.line()


def parse_values(raw):
    """A get/gets reply -> {key: (flags, value, cas or None)}; raises on anything but VALUE/END."""
    out = {}
    while raw:
        line, _, rest = raw.partition(b"\r\n")
        if line == b"END":
            if rest:
                raise AssertionError("bytes after END: %r" % rest[:80])
            return out
        parts = line.split()
        if parts[0] != b"VALUE":
            raise AssertionError("unexpected reply line %r" % line[:120])
        n = int(parts[3])
        out[parts[1]] = (int(parts[2]), rest[:n], int(parts[4]) if len(parts) > 4 else None)
        if rest[n:n + 2] != b"\r\n":
            raise AssertionError("value of %r not followed by CRLF" % parts[1])
        raw = rest[n + 2:]
    raise AssertionError("reply without END")


def get_many(conn, keys, verb=b"get"):
    conn.send(verb + b" " + b" ".join(keys) + b"\r\n")
    return parse_values(conn.get_reply())


def holders(backends, keys):
    """{key: [indexes of the backends that hold it]}, read directly from every backend; keys on
    none are left out."""
    where = {}
    for i, b in enumerate(backends):
        for k in contents(b, keys):
            where.setdefault(k, []).append(i)
    return where


def homes(backends, keys):
    """{key: index of the one backend that holds it}; fails if a key is on two servers."""
    where = {}
    for k, on in holders(backends, keys).items():
        if len(on) > 1:
            raise AssertionError("%r is on %s" % (k, " and ".join(backends[i].name for i in on)))
        where[k] = on[0]
    return where


def contents(backend, keys):
    c = backend.conn()
    try:
        found = {}
        for start in range(0, len(keys), 100):
            found.update({k: v[1] for k, v in get_many(c, keys[start:start + 100]).items()})
        return found
    finally:
        c.close()


def value_for(key, gen):
    """A value that names its key and generation, of a length that varies with both."""
    body = b"%s/%d/" % (key, gen)
    return body * (1 + (len(key) * 7 + gen) % 9)


# --- error windows ----------------------------------------------------------------------------

def bursts(error_times, gap):
    """Groups sorted times into bursts separated by more than gap seconds."""
    out = []
    for t in error_times:
        if out and t - out[-1][-1] <= gap:
            out[-1].append(t)
        else:
            out.append([t])
    return out


class Traffic:
    """Sequential get/set traffic over a fixed key set with a model of what each key must hold.

    A key's model value is the last value a set was acknowledged for. A live server's key must
    always read back exactly that; a dead server's key may fail (counted with its time) or miss,
    and when it hits it must still hold the model value."""

    def __init__(self, keys, home, victim, model):
        self.keys, self.home, self.victim, self.model = keys, home, victim, model
        self.gen = {k: 0 for k in keys}
        self.errors = []        # (time, key, detail) for the victim's keys
        self.problems = []      # anything that must not happen
        self.requests = 0
        self.i = 0

    def victim_key(self, k):
        return self.home[k] == self.victim

    def record(self, k, ok, detail, t):
        if ok:
            return
        if detail.startswith("error") and self.victim_key(k):
            self.errors.append((t, k, detail))
        elif detail.startswith("miss") and self.victim_key(k):
            pass
        else:
            who = "victim" if self.victim_key(k) else "live"
            self.problems.append("%.3f s: %s key %r: %s" % (t, who, k, detail))

    def run(self, seconds, op, t0, until=None):
        """Issues requests for `seconds` (or until until() is true); op(key, set_value or None)
        returns ("ok"|"miss"|"error ...", value or None)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if until is not None and self.requests % 64 == 0 and until():
                return True
            k = self.keys[self.i % len(self.keys)]
            writing = self.i % 4 == 0
            self.i += 1
            self.requests += 1
            if writing:
                self.gen[k] += 1
                v = value_for(k, self.gen[k] + 1000 * self.i)
                res, _ = op(k, v)
                t = time.monotonic() - t0
                if res == "ok":
                    self.model[k] = v
                self.record(k, res == "ok", res if res != "miss" else "miss: set not stored", t)
            else:
                res, got = op(k, None)
                t = time.monotonic() - t0
                if res == "ok" and got != self.model.get(k):
                    self.record(k, False, "wrong value %r, expected %r"
                                % (got[:40], (self.model.get(k) or b"<miss>")[:40]), t)
                elif res == "miss" and self.model.get(k) is not None and not self.victim_key(k):
                    self.record(k, False, "miss, expected %r" % self.model[k][:40], t)
                else:
                    self.record(k, res == "ok", res, t)
        return until is None


class ScaleOut(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        missing = [b for b in BUILDS if not os.access(os.path.join(BIN_DIR, b), os.X_OK)]
        if missing:
            raise RuntimeError("not built: %s (run make)" % ", ".join(missing))
        cls.tmp = tempfile.mkdtemp(prefix="p99-scaleout-")
        cls.backends = [Backend(os.path.join(BIN_DIR, b), cls.tmp) for b in BUILDS]
        cls.proxy = Proxy(cls.backends, cls.tmp, RETRY_TIMEOUT_MS, FAILURE_LIMIT)

    @classmethod
    def tearDownClass(cls):
        scaleout.stop_all()
        if os.environ.get("SCALEOUT_KEEP_LOGS"):
            say("logs kept in " + cls.tmp)
        else:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.assertTrue(self.proxy.alive(), "nutcracker exited (log: %s)" % self.proxy.log)
        for b in self.backends:
            self.assertTrue(b.alive(), "%s exited (log: %s)" % (b.name, b.log))

    def tearDown(self):
        # A server that died during a test (not by the test's SIGKILL) is a failure of its own.
        for b in self.backends:
            self.assertTrue(b.alive(), "%s exited (log: %s)" % (b.name, b.log))

    def assert_spread(self, where, keys, label):
        counts = [sum(1 for k in keys if where.get(k) == i) for i in range(len(self.backends))]
        self.assertEqual(sum(counts), len(keys), "%s: keys on no server" % label)
        for b, n in zip(self.backends, counts):
            # ketama over 3 equal servers gives each a third give or take; 10% catches a server
            # the proxy never uses without depending on the hash's luck.
            self.assertGreaterEqual(n, len(keys) // 10, "%s: %s holds only %d of %d keys"
                                    % (label, b.name, n, len(keys)))
        return counts

    # --- through the proxy -------------------------------------------------------------------

    def test_1_commands_through_proxy(self):
        c = self.proxy.conn()
        keys = [b"cmd:%d" % i for i in range(300)]
        model = {}
        for i, k in enumerate(keys):
            v = value_for(k, 1) if i % 50 else bytes(random.Random(i).randrange(256)
                                                      for _ in range(300)) + b"\r\nEND\r\n"
            self.assertEqual(store(c, b"set", k, v, flags=i), b"STORED\r\n")
            model[k] = (i, v)
        # get, one key at a time, and one multi-get that nutcracker splits over the servers
        for k in keys[:30]:
            got = get_many(c, [k])
            self.assertEqual(got, {k: model[k] + (None,)})
        absent = [b"cmd:absent:%d" % i for i in range(20)]
        got = get_many(c, keys + absent)
        self.assertEqual({k: v[:2] for k, v in got.items()}, model)
        where = homes(self.backends, keys)
        counts = self.assert_spread(where, keys, "set through the proxy")
        say("300 keys through nutcracker (ketama, murmur): %s" % ", ".join(
            "%s %d" % (b.name, n) for b, n in zip(self.backends, counts)))
        # gets + cas: the unique from the proxy is the holding server's, stale ones are refused
        uniq = {k: v[2] for k, v in get_many(c, keys, b"gets").items()}
        self.assertEqual(set(uniq), set(keys))
        for k in keys:
            new = value_for(k, 2)
            self.assertEqual(store(c, b"cas", k, new, flags=7, cas=uniq[k]), b"STORED\r\n", k)
            self.assertEqual(store(c, b"cas", k, b"stale", cas=uniq[k]), b"EXISTS\r\n", k)
            model[k] = (7, new)
        self.assertEqual(store(c, b"cas", b"cmd:absent:0", b"x", cas=1), b"NOT_FOUND\r\n")
        # add / replace / append / prepend, each both ways
        for k in keys:
            self.assertEqual(store(c, b"add", k, b"no"), b"NOT_STORED\r\n", k)
            self.assertEqual(store(c, b"replace", k, b"mid", flags=3), b"STORED\r\n", k)
            self.assertEqual(store(c, b"append", k, b">"), b"STORED\r\n", k)
            self.assertEqual(store(c, b"prepend", k, b"<"), b"STORED\r\n", k)
            model[k] = (3, b"<mid>")
        for k in absent[:5]:
            self.assertEqual(store(c, b"replace", k, b"x"), b"NOT_STORED\r\n")
            self.assertEqual(store(c, b"append", k, b"x"), b"NOT_STORED\r\n")
            self.assertEqual(store(c, b"prepend", k, b"x"), b"NOT_STORED\r\n")
        for k in absent[5:10]:
            self.assertEqual(store(c, b"add", k, b"new"), b"STORED\r\n")
            model[k] = (0, b"new")
        store(c, b"set", absent[10], b"quiet", noreply=True)
        model[absent[10]] = (0, b"quiet")
        # incr / decr
        counters = [b"cmd:n:%d" % i for i in range(60)]
        for i, k in enumerate(counters):
            self.assertEqual(store(c, b"set", k, b"%d" % (i * 10)), b"STORED\r\n")
            self.assertEqual(c.cmd(b"incr %s 5\r\n" % k), b"%d\r\n" % (i * 10 + 5))
            self.assertEqual(c.cmd(b"decr %s 3\r\n" % k), b"%d\r\n" % (i * 10 + 2))
            model[k] = (0, b"%d" % (i * 10 + 2))
        self.assertEqual(c.cmd(b"decr %s 1000000\r\n" % counters[1]), b"0\r\n")
        # memcached keeps a decremented value's length, padding the number with spaces
        model[counters[1]] = (0, b"0 ")
        self.assertEqual(c.cmd(b"incr %s 18446744073709551615\r\n" % counters[2]),
                         b"%d\r\n" % ((22 + 18446744073709551615) % (1 << 64)))
        model[counters[2]] = (0, b"%d" % ((22 + 18446744073709551615) % (1 << 64)))
        self.assertEqual(c.cmd(b"incr cmd:n:absent 1\r\n"), b"NOT_FOUND\r\n")
        self.assertTrue(c.cmd(b"incr %s 1\r\n" % keys[1]).startswith(b"CLIENT_ERROR "))
        # touch, delete
        for k in keys[:100]:
            self.assertEqual(c.cmd(b"touch %s 3600\r\n" % k), b"TOUCHED\r\n")
        self.assertEqual(c.cmd(b"touch cmd:absent:11 10\r\n"), b"NOT_FOUND\r\n")
        for k in keys[::3]:
            self.assertEqual(c.cmd(b"delete %s\r\n" % k), b"DELETED\r\n")
            self.assertEqual(c.cmd(b"delete %s\r\n" % k), b"NOT_FOUND\r\n")
            del model[k]
        # a value of several hundred KiB crosses nutcracker's 16 KiB buffers in both directions
        big = bytes(random.Random(7).randrange(256) for _ in range(600 * 1024))
        self.assertEqual(store(c, b"set", b"cmd:big", big), b"STORED\r\n")
        model[b"cmd:big"] = (0, big)
        self.assertEqual(c.cmd(b"version\r\n")[:8], b"VERSION ")
        # everything read back through the proxy, then directly from the server that holds it
        all_keys = keys + absent + counters + [b"cmd:big"]
        got = {k: v[:2] for k, v in get_many(c, all_keys).items()}
        self.assertEqual(set(got), set(model))
        wrong = [k for k in model if got[k] != model[k]]
        self.assertEqual(wrong, [], "multi-get through the proxy: %d wrong, first %r: %r, expected %r"
                         % (len(wrong), wrong[:1], got[wrong[0]][1][:60] if wrong else None,
                            model[wrong[0]][1][:60] if wrong else None))
        where = homes(self.backends, all_keys)
        self.assertEqual(set(where), set(model))
        for i, b in enumerate(self.backends):
            mine = [k for k in model if where[k] == i]
            self.assertEqual(contents(b, mine), {k: model[k][1] for k in mine}, b.name)
        c.close()

    def kill_and_rejoin(self, victim, prefix, op, retry_s, burst_max, label):
        """Loads keys, drives traffic, SIGKILLs backend `victim`, restarts it, waits until its
        keys go to it again; returns measured figures. op(key, value|None) as in Traffic."""
        keys = [b"%s:%d" % (prefix, i) for i in range(240)]
        model = {}
        for k in keys:
            v = value_for(k, 0)
            self.assertEqual(op(k, v)[0], "ok", "%s: initial set of %r" % (label, k))
            model[k] = v
        home = homes(self.backends, keys)
        self.assertEqual(set(home), set(keys), "%s: a set key is on no server" % label)
        self.assert_spread(home, keys, label)
        vb = self.backends[victim]
        traffic = Traffic(keys, home, victim, model)
        t0 = time.monotonic()
        traffic.run(0.3, op, t0)
        self.assertEqual(traffic.errors, [], "%s: errors before the kill" % label)
        vb.kill()
        t_kill = time.monotonic() - t0
        traffic.run(2.3 * retry_s, op, t0)
        vb.restart()
        t_restart = time.monotonic() - t0
        mine = [k for k in keys if home[k] == victim]
        rejoined = traffic.run(3 * retry_s + 5, op, t0, until=lambda: bool(contents(vb, mine)))
        t_rejoin = time.monotonic() - t0
        self.assertTrue(rejoined, "%s: %s did not get its keys back within %.1f s of its restart"
                        % (label, vb.name, 3 * retry_s + 5))
        traffic.run(0.3, op, t0)
        self.assertEqual(traffic.problems[:10], [], "%s: %d problems" % (label, len(traffic.problems)))
        errs = sorted(t for t, _, _ in traffic.errors)
        self.assertTrue(errs, "%s: no request failed after the SIGKILL (the test did not reach "
                              "the dead server)" % label)
        self.assertGreaterEqual(errs[0], t_kill)
        late = [e for e in traffic.errors if e[0] > t_restart]
        self.assertEqual(late, [], "%s: errors after the restart" % label)
        groups = bursts(errs, retry_s / 2)
        for g in groups:
            self.assertLessEqual(len(g), burst_max, "%s: %d errors in one burst: %s"
                                 % (label, len(g), traffic.errors[:8]))
        for a, b in zip(groups, groups[1:]):
            # the proxy/client does not try the dead server again before its retry time; a slow
            # machine only makes the gap longer
            self.assertGreaterEqual(b[0] - a[-1], 0.9 * retry_s, "%s: retried after %.3f s"
                                    % (label, b[0] - a[-1]))
        window = groups[0][-1] - t_kill
        # After the restart every key goes back to the server it lived on (the ring is the same);
        # each live server still holds exactly the model values of its keys.
        # Keys the victim owned that were written while it was out of the ring are still on the
        # live server that took them: stale copies that a later ejection would serve again.
        for k in keys:
            self.assertEqual(op(k, model[k])[0], "ok", "%s: set %r after the rejoin" % (label, k))
        for i, b in enumerate(self.backends):
            own = [k for k in keys if home[k] == i]
            self.assertEqual(contents(b, own), {k: model[k] for k in own}, "%s: %s" % (label, b.name))
        stale = {k: on for k, on in holders(self.backends, keys).items() if len(on) > 1}
        for k, on in stale.items():
            self.assertEqual(home[k], victim, "%s: a live server's key %r is on %s" % (label, k, on))
        return {"errors": len(errs), "bursts": [len(g) for g in groups], "window_ms": window * 1e3,
                "rejoin_s": t_rejoin - t_restart, "requests": traffic.requests,
                "live_keys": sum(1 for k in keys if home[k] != victim), "victim_keys": len(mine),
                "stale": len(stale)}

    def proxy_op(self):
        conn = [self.proxy.conn()]
        self.addCleanup(lambda: conn[0].close())

        def op(k, v):
            c = conn[0]
            try:
                if v is not None:
                    r = store(c, b"set", k, v)
                    if r == b"STORED\r\n":
                        return "ok", None
                    return ("error " + r.decode(errors="replace").strip(), None)
                c.send(b"get " + k + b"\r\n")
                raw = c.get_reply()
                if raw.startswith(b"SERVER_ERROR"):
                    return "error " + raw.decode(errors="replace").strip(), None
                got = parse_values(raw)
                return ("ok", got[k][1]) if k in got else ("miss", None)
            except (OSError, EOFError) as e:
                # the proxy closes a client connection only on its own errors: reconnect and
                # report it as a failure of this request
                conn[0].close()
                conn[0] = self.proxy.conn()
                return "error connection: %r" % e, None
        return op

    def test_2_kill_each_server_behind_proxy(self):
        before = self.proxy.stats()
        for victim, b in enumerate(self.backends):
            with self.subTest(victim=b.name):
                m = self.kill_and_rejoin(victim, b"kp%d" % victim, self.proxy_op(),
                                         RETRY_TIMEOUT_MS / 1e3, FAILURE_LIMIT,
                                         "nutcracker, %s killed" % b.name)
                self.assertLessEqual(m["window_ms"], RETRY_TIMEOUT_MS,
                                     "errors for %.0f ms after the kill" % m["window_ms"])
                self.assertLessEqual(m["bursts"][0], FAILURE_LIMIT)
                say("nutcracker, SIGKILL %s: %d failed requests in %d bursts %s "
                    "(server_failure_limit %d each), first window %.1f ms after the kill "
                    "(server_retry_timeout %d ms); rejoined %.2f s after restart; "
                    "%d requests, 0 wrong or lost on %d live keys; %d of its %d keys left as stale "
                    "copies on live servers"
                    % (b.name, m["errors"], len(m["bursts"]), m["bursts"], FAILURE_LIMIT,
                       m["window_ms"], RETRY_TIMEOUT_MS, m["rejoin_s"], m["requests"],
                       m["live_keys"], m["stale"], m["victim_keys"]))
        time.sleep(0.3)  # one stats interval (100 ms) and then some
        after = self.proxy.stats()
        self.assertGreaterEqual(after["server_ejects"] - before["server_ejects"], len(self.backends),
                                "nutcracker's server_ejects counter")
        for b in self.backends:
            self.assertGreater(after[b.name]["server_ejected_at"], 0, b.name)

    # --- client-side consistent hashing ---------------------------------------------------------

    def hash_client(self, **kw):
        from pymemcache.client.hash import HashClient
        return HashClient([("127.0.0.1", b.port) for b in self.backends], connect_timeout=1,
                          timeout=2, **kw)

    def test_3_hashclient_commands(self):
        hc = self.hash_client()
        keys = ["hc:%d" % i for i in range(300)]
        model = {}
        for i, k in enumerate(keys):
            self.assertTrue(hc.set(k, value_for(k.encode(), 1)))
            model[k] = value_for(k.encode(), 1)
        self.assertEqual(hc.get_many(keys + ["hc:absent"]), model)
        where = homes(self.backends, [k.encode() for k in keys])
        counts = self.assert_spread(where, [k.encode() for k in keys], "HashClient")
        say("300 keys through pymemcache HashClient (rendezvous hashing): %s" % ", ".join(
            "%s %d" % (b.name, n) for b, n in zip(self.backends, counts)))
        for k in keys:
            v, cas = hc.gets(k)
            self.assertEqual(v, model[k])
            self.assertTrue(hc.cas(k, b"c", cas))
            self.assertFalse(hc.cas(k, b"stale", cas))
            self.assertFalse(hc.add(k, b"no", noreply=False))
            self.assertTrue(hc.replace(k, b"mid", noreply=False))
            self.assertTrue(hc.append(k, b">", noreply=False))
            self.assertTrue(hc.prepend(k, b"<", noreply=False))
            model[k] = b"<mid>"
        self.assertIsNone(hc.cas("hc:absent", b"x", b"1"))
        self.assertTrue(hc.add("hc:added", b"a", noreply=False))
        model["hc:added"] = b"a"
        for i in range(60):
            k = "hc:n:%d" % i
            hc.set(k, b"%d" % (i * 10))
            self.assertEqual(hc.incr(k, 5), i * 10 + 5)
            self.assertEqual(hc.decr(k, 3), i * 10 + 2)
            model[k] = b"%d" % (i * 10 + 2)
        self.assertIsNone(hc.incr("hc:n:absent", 1))
        for k in keys[:100]:
            self.assertTrue(hc.touch(k, 3600, noreply=False))
        for k in keys[::3]:
            self.assertTrue(hc.delete(k, noreply=False))
            self.assertFalse(hc.delete(k, noreply=False))
            del model[k]
        got = hc.get_many(list(model) + keys)
        self.assertEqual(got, model)
        where = homes(self.backends, [k.encode() for k in model])
        for i, b in enumerate(self.backends):
            mine = [k.encode() for k in model if where[k.encode()] == i]
            self.assertEqual(contents(b, mine), {k: model[k.decode()] for k in mine}, b.name)
        hc.close()

    def test_4_hashclient_kill_and_rejoin(self):
        from pymemcache.exceptions import MemcacheError
        retry_s, attempts, dead_s = 0.25, 1, 1.0
        hc = self.hash_client(retry_attempts=attempts, retry_timeout=retry_s, dead_timeout=dead_s)

        def op(k, v):
            key = k.decode()
            try:
                if v is not None:
                    return ("ok" if hc.set(key, v, noreply=False) else "miss"), None
                got = hc.get(key)
                return ("miss", None) if got is None else ("ok", got)
            except (MemcacheError, OSError) as e:
                return "error %r" % e, None
        victim = 2
        name = self.backends[victim].name
        # pymemcache 3.5 raises on the first failure, answers a miss / not-stored without
        # trying while retry_timeout runs, raises on the retry, then drops the server from the
        # ring after retry_attempts (raising once more on the request that drops it), and puts it
        # back after dead_timeout: so at most retry_attempts + 2 failures per dead_timeout.
        # One more is allowed: on a loaded machine a run once counted 4 in one burst (cause not
        # established; the io_uring build's listener is known to accept for 7-41 ms after the
        # SIGKILL, connections that are then reset, which can add a failure of its own).
        m = self.kill_and_rejoin(victim, b"kh", op, dead_s, attempts + 3,
                                 "HashClient, %s killed" % name)
        bound_ms = (attempts + 1) * retry_s * 1e3 + 500
        self.assertLessEqual(m["window_ms"], bound_ms)
        say("HashClient (retry_attempts %d, retry_timeout %.2f s, dead_timeout %.1f s), SIGKILL "
            "%s: %d failed requests in bursts %s, first window %.1f ms after the kill; rejoined "
            "%.2f s after restart; %d requests, 0 wrong or lost on %d live keys; %d of its %d keys "
            "left as stale copies on live servers"
            % (attempts, retry_s, dead_s, name, m["errors"], m["bursts"], m["window_ms"],
               m["rejoin_s"], m["requests"], m["live_keys"], m["stale"], m["victim_keys"]))
        hc.close()

    # --- libmemcached's tools -----------------------------------------------------------------

    @staticmethod
    def tool(name):
        # upstream names them memcp/memcat/memflush; Debian's libmemcached-tools memccp/...
        for n in (name, "memc" + name[len("mem"):]):
            if shutil.which(n):
                return n
        raise RuntimeError("%s (or its Debian name) not installed: make deps" % name)

    def run_tool(self, name, servers, *args):
        r = subprocess.run([self.tool(name), "--servers=" + servers] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(r.returncode, 0, "%s %s: %s" % (name, " ".join(args), r.stderr[-300:]))
        return r.stdout

    def test_5_libmemcached_tools(self):
        d = os.path.join(self.tmp, "files")
        os.makedirs(d, exist_ok=True)
        rnd = random.Random(5)
        files = {}
        for i in range(30):
            name = "lm%02d.bin" % i
            data = bytes(rnd.randrange(256) for _ in range(rnd.choice((1, 100, 5000, 200000))))
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
            files[name] = data
        paths = [os.path.join(d, n) for n in sorted(files)]
        keys = [n.encode() for n in sorted(files)]
        for label, servers in (("client-side (libmemcached)", ",".join(b.addr for b in self.backends)),
                               ("through nutcracker", "127.0.0.1:%d" % self.proxy.port)):
            self.run_tool("memcp", servers, *paths)
            for n, data in files.items():
                # memcat ends what it prints with a newline of its own: --file writes the value
                out = os.path.join(self.tmp, "memcat.out")
                self.run_tool("memcat", servers, "--file=" + out, n)
                with open(out, "rb") as f:
                    self.assertEqual(f.read(), data, "%s: %s" % (label, n))
            where = homes(self.backends, keys)
            self.assertEqual(set(where), set(keys), label)
            used = sorted(set(where.values()))
            self.assertEqual(used, [0, 1, 2], "%s: memcp used only %s" % (label, used))
            for i, b in enumerate(self.backends):
                own = [k for k in keys if where[k] == i]
                self.assertEqual(contents(b, own), {k: files[k.decode()] for k in own})
            # memflush sends flush_all, which twemproxy does not forward: flush the servers
            self.run_tool("memflush", ",".join(b.addr for b in self.backends))
            self.assertEqual(homes(self.backends, keys), {}, "%s: keys left after memflush" % label)
        say("memcp/memcat/memflush: 30 files (1 B - 200 KB) over the three servers directly and "
            "through nutcracker, every byte back, memflush empties all three")

    # --- the parity runner's proxy scenario -------------------------------------------------

    def test_6_parity_proxy_scenario(self):
        """A tiny run of `p99-parity --scenarios proxy`: a figure for every variant, no errors."""
        prog = os.path.join(BIN_DIR, "p99-parity")
        if not os.access(prog, os.X_OK):
            self.skipTest("p99-parity not built")
        out = os.path.join(self.tmp, "parity")
        r = subprocess.run([prog, "--scenarios", "proxy", "--rounds", "1", "--warmup", "0.1",
                            "--duration", "0.4", "--cache-args", "--keys 2000", "--bin-dir", BIN_DIR,
                            "--out", out], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout.decode(errors="replace")[-2000:])
        with open(os.path.join(out, "results.json")) as f:
            sc = json.load(f)["scenarios"]["proxy"]
        self.assertIsNone(sc["problem"])
        names = [v["name"] for v in sc["variants"]]
        self.assertEqual(names[:4], list("mcserver-%s" % b for b in
                                         ("slab-epoll", "p99-epoll", "slab-uring", "p99-uring")))
        for v in sc["variants"]:
            if v["program"] is None:
                self.assertTrue(v["problem"].startswith(("not built", "not installed")), v)
                continue
            self.assertIsNone(v["problem"], v["name"])
            for run in v["direct_runs"] + v["proxied_runs"]:
                self.assertGreater(run["requests_per_s"], 0, v["name"])
                self.assertEqual(run["errors"], 0, "%s: %s" % (v["name"], run["command"]))
                self.assertGreaterEqual(run["server_cpu_us_per_request"], 0, v["name"])
            for run in v["proxied_runs"]:
                # nutcracker parses every request and reply: it cannot have used no CPU
                self.assertGreater(run["proxy_cpu_us_per_request"], 0, v["name"])
            self.assertEqual(len(v["proxied_runs"]), 1, v["name"])


def main():
    global BIN_DIR
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    BIN_DIR = os.path.abspath(sys.argv.pop(1))
    if not shutil.which("nutcracker"):
        sys.exit("scale-out: nutcracker not installed (make deps)")
    # make sure the finally/tearDown path runs when a timeout sends SIGTERM
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("scale-out: terminated"))
    try:
        prog = unittest.main(exit=False, verbosity=1)
    finally:
        scaleout.stop_all()
    sys.exit(0 if prog.result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
