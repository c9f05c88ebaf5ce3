"""mcserver protocol suite: every command, every error reply, noreply, expiry, CAS races,
incr/decr edges, large values, pipelining and fragmented requests.

Run: MCSERVER_BIN=build/bin/mcserver-slab-epoll /usr/bin/python3 -m unittest test_protocol
"""
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
import unittest

from pymemcache.client.base import Client

from mcutil import Conn, start_mcserver, start_memcached

BIN = os.environ.get("MCSERVER_BIN", "build/bin/mcserver-slab-epoll")
ITEM_MAX = 1024 * 1024


class Proto(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = start_mcserver(BIN, "-t", "2", "-m", "64")

    @classmethod
    def tearDownClass(cls):
        rc = cls.srv.stop()
        assert rc == 0, "server did not exit cleanly on SIGTERM: %r" % rc

    def setUp(self):
        self.c = Conn(self.srv.port)
        self.assertEqual(self.c.cmd(b"flush_all\r\n"), b"OK\r\n")

    def tearDown(self):
        self.c.close()
        self.assertTrue(self.srv.alive())

    def get(self, key):
        """(value, flags) of key, or None."""
        self.c.send(b"get " + key + b"\r\n")
        ln = self.c.line()
        if ln == b"END\r\n":
            return None
        _, k, flags, n = ln.split()
        self.assertEqual(k, key)
        data = self.c.exactly(int(n) + 2)
        self.assertEqual(data[-2:], b"\r\n")
        self.assertEqual(self.c.line(), b"END\r\n")
        return data[:-2], int(flags)

    def gets_cas(self, key):
        self.c.send(b"gets " + key + b"\r\n")
        ln = self.c.line()
        self.c.exactly(int(ln.split()[3]) + 2)
        self.assertEqual(self.c.line(), b"END\r\n")
        return int(ln.split()[4])

    def set(self, key, value, flags=0, exp=0, cmd=b"set"):
        return self.c.cmd(b"%s %s %d %d %d\r\n%s\r\n" % (cmd, key, flags, exp, len(value), value))

    # --- storage commands -------------------------------------------------------------------
    def test_set_get_flags(self):
        self.assertEqual(self.set(b"k", b"hello", flags=4294967295), b"STORED\r\n")
        self.assertEqual(self.get(b"k"), (b"hello", 4294967295))
        self.assertEqual(self.set(b"k", b""), b"STORED\r\n")
        self.assertEqual(self.get(b"k"), (b"", 0))
        self.assertIsNone(self.get(b"missing"))
        binval = bytes(range(256)) + b"\r\n\x00END\r\n"
        self.assertEqual(self.set(b"bin", binval), b"STORED\r\n")
        self.assertEqual(self.get(b"bin"), (binval, 0))

    def test_add_replace(self):
        self.assertEqual(self.set(b"a", b"1", cmd=b"add"), b"STORED\r\n")
        self.assertEqual(self.set(b"a", b"2", cmd=b"add"), b"NOT_STORED\r\n")
        self.assertEqual(self.get(b"a"), (b"1", 0))
        self.assertEqual(self.set(b"r", b"1", cmd=b"replace"), b"NOT_STORED\r\n")
        self.assertIsNone(self.get(b"r"))
        self.assertEqual(self.set(b"a", b"3", flags=7, cmd=b"replace"), b"STORED\r\n")
        self.assertEqual(self.get(b"a"), (b"3", 7))

    def test_append_prepend_keep_flags(self):
        self.assertEqual(self.set(b"x", b"mid", cmd=b"append"), b"NOT_STORED\r\n")
        self.assertEqual(self.set(b"x", b"mid", cmd=b"prepend"), b"NOT_STORED\r\n")
        self.assertEqual(self.set(b"x", b"mid", flags=5), b"STORED\r\n")
        c1 = self.gets_cas(b"x")
        self.assertEqual(self.set(b"x", b">>", flags=9, cmd=b"append"), b"STORED\r\n")
        self.assertEqual(self.set(b"x", b"<<", flags=9, cmd=b"prepend"), b"STORED\r\n")
        self.assertEqual(self.get(b"x"), (b"<<mid>>", 5))
        self.assertNotEqual(self.gets_cas(b"x"), c1)

    def test_cas(self):
        self.assertEqual(self.c.cmd(b"cas c 0 0 1 1\r\nx\r\n"), b"NOT_FOUND\r\n")
        self.set(b"c", b"v1")
        cas = self.gets_cas(b"c")
        self.assertEqual(self.c.cmd(b"cas c 0 0 2 %d\r\nv2\r\n" % (cas + 1)), b"EXISTS\r\n")
        self.assertEqual(self.c.cmd(b"cas c 0 0 2 0\r\nv2\r\n"), b"EXISTS\r\n")
        self.assertEqual(self.c.cmd(b"cas c 3 0 2 %d\r\nv2\r\n" % cas), b"STORED\r\n")
        self.assertEqual(self.get(b"c"), (b"v2", 3))
        self.assertEqual(self.c.cmd(b"cas c 0 0 2 %d\r\nv3\r\n" % cas), b"EXISTS\r\n")
        self.assertEqual(self.c.cmd(b"cas c 0 0 2 abc\r\nv3\r\n"),
                         b"CLIENT_ERROR bad command line format\r\n")
        self.assertEqual(self.c.line(), b"ERROR\r\n")  # the value line, read as a command
        self.assertEqual(self.c.cmd(b"cas c 0 0 2\r\n"), b"ERROR\r\n")

    def test_delete(self):
        self.set(b"d", b"1")
        self.assertEqual(self.c.cmd(b"delete d\r\n"), b"DELETED\r\n")
        self.assertEqual(self.c.cmd(b"delete d\r\n"), b"NOT_FOUND\r\n")
        self.set(b"d", b"1")
        self.assertEqual(self.c.cmd(b"delete d 0\r\n"), b"DELETED\r\n")
        usage = b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
        self.assertEqual(self.c.cmd(b"delete d 1\r\n"), usage)
        self.assertEqual(self.c.cmd(b"delete d 0 x\r\n"), usage)
        self.assertEqual(self.c.cmd(b"delete\r\n"), b"ERROR\r\n")
        self.assertEqual(self.c.cmd(b"delete a b c d\r\n"), b"ERROR\r\n")

    def test_incr_decr(self):
        self.assertEqual(self.c.cmd(b"incr n 1\r\n"), b"NOT_FOUND\r\n")
        self.assertEqual(self.c.cmd(b"decr n 1\r\n"), b"NOT_FOUND\r\n")
        self.set(b"n", b"10", flags=3)
        self.assertEqual(self.c.cmd(b"incr n 5\r\n"), b"15\r\n")
        self.assertEqual(self.c.cmd(b"decr n 6\r\n"), b"9\r\n")
        self.assertEqual(self.get(b"n"), (b"9 ", 3))  # shorter result: padded in place
        self.assertEqual(self.c.cmd(b"incr n 1\r\n"), b"10\r\n")
        self.assertEqual(self.c.cmd(b"decr n 100\r\n"), b"0\r\n")  # saturates
        self.set(b"n", b"18446744073709551615")
        self.assertEqual(self.c.cmd(b"incr n 2\r\n"), b"1\r\n")  # wraps
        self.set(b"n", b"9")
        self.assertEqual(self.c.cmd(b"incr n 1\r\n"), b"10\r\n")
        self.assertEqual(self.get(b"n"), (b"10", 0))  # longer result: new item
        self.set(b"n", b" 12")
        self.assertEqual(self.c.cmd(b"incr n 1\r\n"), b"13\r\n")
        nonnum = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
        for bad in (b"", b"-1", b"12a", b"123456789012345678901", b"abc"):
            self.set(b"n", bad)
            self.assertEqual(self.c.cmd(b"incr n 1\r\n"), nonnum, bad)
        self.set(b"n", b"5")
        baddelta = b"CLIENT_ERROR invalid numeric delta argument\r\n"
        for bad in (b"-1", b"abc", b"18446744073709551616"):
            self.assertEqual(self.c.cmd(b"incr n " + bad + b"\r\n"), baddelta)
        self.assertEqual(self.c.cmd(b"incr n 18446744073709551615\r\n"), b"4\r\n")
        cas = self.gets_cas(b"n")
        self.c.cmd(b"decr n 1\r\n")
        self.assertNotEqual(self.gets_cas(b"n"), cas)
        self.assertEqual(self.c.cmd(b"incr n\r\n"), b"ERROR\r\n")

    def test_touch_gat_keep_cas(self):
        self.assertEqual(self.c.cmd(b"touch t 10\r\n"), b"NOT_FOUND\r\n")
        self.set(b"t", b"v", flags=2)
        cas = self.gets_cas(b"t")
        self.assertEqual(self.c.cmd(b"touch t 100\r\n"), b"TOUCHED\r\n")
        self.assertEqual(self.c.cmd(b"touch t abc\r\n"),
                         b"CLIENT_ERROR invalid exptime argument\r\n")
        self.assertEqual(self.c.cmd(b"touch t\r\n"), b"ERROR\r\n")
        self.c.send(b"gat 100 t nope\r\n")
        self.assertEqual(self.c.get_reply(), b"VALUE t 2 1\r\nv\r\nEND\r\n")
        self.c.send(b"gats 100 t\r\n")
        self.assertEqual(self.c.get_reply(), b"VALUE t 2 1 %d\r\nv\r\nEND\r\n" % cas)
        self.assertEqual(self.gets_cas(b"t"), cas)
        self.assertEqual(self.c.cmd(b"gat abc t\r\n"), b"CLIENT_ERROR invalid exptime argument\r\n")
        self.assertEqual(self.c.cmd(b"gat 10\r\n"), b"END\r\n")
        self.assertEqual(self.c.cmd(b"gat\r\n"), b"ERROR\r\n")

    def test_multiget(self):
        keys = [b"mk%d" % i for i in range(300)]
        for k in keys[::2]:
            self.set(k, k * 3)
        self.c.send(b"get " + b" ".join(keys) + b"\r\n")
        expect = b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(k) * 3, k * 3) for k in keys[::2])
        self.assertEqual(self.c.get_reply(), expect + b"END\r\n")
        self.assertEqual(self.c.cmd(b"get\r\n"), b"ERROR\r\n")
        self.assertEqual(self.c.cmd(b"gets\r\n"), b"ERROR\r\n")

    def test_long_gat_lines_across_reads(self):
        # A gat of 20 keys of 250 bytes is a 5 KB line: memcached takes it whole from one
        # read (16 KB buffer). However the bytes are split (the uring builds receive into
        # 4 KB buffers), the line is reassembled and answered, never closed.
        keys = [(b"%03d" % i) * 84 for i in range(20)]
        keys = [k[:250] for k in keys]
        for k in keys[::3]:
            self.set(k, b"v" + k[:3])
        line = b"gat 0 " + b" ".join(keys) + b"\r\n"
        self.assertGreater(len(line), 5000)
        expect = b"".join(b"VALUE %s 0 4\r\nv%s\r\n" % (k, k[:3]) for k in keys[::3]) + b"END\r\n"
        self.c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for split in (None, 3000, 4095, 4096):
            if split is None:
                self.c.send(line)
            else:
                self.c.send(line[:split])
                time.sleep(0.05)  # let the first piece be read on its own
                self.c.send(line[split:])
            self.assertEqual(self.c.get_reply(), expect, split)
        # gats too, and 60 keys (15 KB, still under memcached's read buffer)
        line = b"gats 0 " + b" ".join(keys * 3) + b"\r\n"
        self.c.send(line[:4000])
        time.sleep(0.05)
        self.c.send(line[4000:])
        reply = self.c.get_reply()
        self.assertEqual(reply.count(b"VALUE "), 3 * len(keys[::3]))
        self.assertTrue(reply.endswith(b"END\r\n"))
        # an unfinished line past the limits still closes the connection, as memcached does
        c = Conn(self.srv.port)
        c.send(b"gat 0 " + b"k " * 9000)
        self.assertTrue(c.is_closed())
        c.close()
        c = Conn(self.srv.port)
        c.send(b"set " + b"k" * 3000)
        self.assertTrue(c.is_closed())
        c.close()

    # --- errors -------------------------------------------------------------------------------
    def test_key_length(self):
        k250, k251 = b"k" * 250, b"k" * 251
        bad = b"CLIENT_ERROR bad command line format\r\n"
        self.assertEqual(self.set(k250, b"ok"), b"STORED\r\n")
        self.assertEqual(self.get(k250), (b"ok", 0))
        self.assertEqual(self.c.cmd(b"set %s 0 0 1\r\n" % k251), bad)
        self.assertEqual(self.c.cmd(b"x\r\n"), b"ERROR\r\n")
        self.assertEqual(self.c.cmd(b"get %s %s\r\n" % (k250, k251)), bad)  # whole reply dropped
        self.assertEqual(self.c.cmd(b"delete %s\r\n" % k251), bad)
        self.assertEqual(self.c.cmd(b"incr %s 1\r\n" % k251), bad)
        self.assertEqual(self.c.cmd(b"touch %s 1\r\n" % k251), bad)

    def test_bad_command_lines(self):
        bad = b"CLIENT_ERROR bad command line format\r\n"
        for line in (b"set k abc 0 1", b"set k -1 0 1", b"set k 0 abc 1", b"set k 0 0 abc",
                     b"set k 0 0 -1", b"set k 0 0 2147483647", b"set k 0 0 4294967295",
                     b"set k 18446744073709551616 0 1"):
            self.assertEqual(self.c.cmd(line + b"\r\n"), bad, line)
        for line in (b"set k 0 0", b"set k 0 0 1 noreply extra", b"bogus", b"GET k", b"",
                     b"   ", b"incr", b"decr k", b"touch k", b"verbosity", b"flush_all 1 2 3",
                     b"stats bogus", b"stats noreply", b"cas k 0 0 1"):
            self.assertEqual(self.c.cmd(line + b"\r\n"), b"ERROR\r\n", line)
        self.assertEqual(self.c.cmd(b"verbosity x\r\n"), bad)
        self.assertEqual(self.c.cmd(b"flush_all abc\r\n"),
                         b"CLIENT_ERROR invalid exptime argument\r\n")
        # flags wider than 32 bits are truncated, as memcached does
        self.assertEqual(self.set(b"f", b"1", flags=4294967296 + 5), b"STORED\r\n")
        self.assertEqual(self.get(b"f"), (b"1", 5))

    def test_bad_data_chunk(self):
        self.assertEqual(self.c.cmd(b"set k 0 0 1\r\nabc\r\n"),
                         b"CLIENT_ERROR bad data chunk\r\n")
        self.assertEqual(self.c.line(), b"ERROR\r\n")
        self.assertIsNone(self.get(b"k"))
        self.assertEqual(self.c.cmd(b"set k 0 0 3\r\nabcXY"), b"CLIENT_ERROR bad data chunk\r\n")
        self.assertEqual(self.c.cmd(b"set k 0 0 1 noreply\r\nabc\r\n"), b"ERROR\r\n")

    def test_too_large_removes_old_value(self):
        self.set(b"big", b"old")
        big = b"x" * (ITEM_MAX + 1)
        self.assertEqual(self.c.cmd(b"set big 0 0 %d\r\n%s\r\n" % (len(big), big)),
                         b"SERVER_ERROR object too large for cache\r\n")
        self.assertIsNone(self.get(b"big"))
        # the refused value was swallowed: the connection is in step
        self.assertEqual(self.set(b"after", b"1"), b"STORED\r\n")
        self.set(b"big", b"old")
        self.assertEqual(self.c.cmd(b"add big 0 0 %d\r\n%s\r\n" % (len(big), big)),
                         b"SERVER_ERROR object too large for cache\r\n")
        self.assertEqual(self.get(b"big"), (b"old", 0))  # only set drops the old value
        self.assertEqual(self.c.cmd(b"set big 0 0 %d noreply\r\n%s\r\n" % (len(big), big)
                                    + b"get big\r\n"), b"END\r\n")

    def test_large_values_near_limit(self):
        stats = self.stats()
        if stats[b"storage"] == b"slab":
            # memcached's accounting: 48 header + 8 cas + key+1 + value+2 <= -I
            top = ITEM_MAX - 48 - 8 - 2 - 2
            v = os.urandom(top)
            self.assertEqual(self.set(b"L", v), b"STORED\r\n")
            self.assertEqual(self.get(b"L"), (v, 0))
            self.assertEqual(self.c.cmd(b"set L 0 0 %d\r\n%s\r\n" % (top + 1, v + b"x")),
                             b"SERVER_ERROR object too large for cache\r\n")
        for n in (ITEM_MAX - 4096, 600 * 1024, 100 * 1024 + 7):
            v = os.urandom(n)
            self.assertEqual(self.set(b"L%d" % n, v), b"STORED\r\n")
            self.assertEqual(self.get(b"L%d" % n), (v, 0))
        # appending past the limit is refused and keeps the old value
        v = os.urandom(ITEM_MAX - 4096)
        self.set(b"A", v)
        r = self.set(b"A", b"y" * 8192, cmd=b"append")
        self.assertTrue(r.startswith(b"SERVER_ERROR"), r)
        self.assertEqual(self.get(b"A"), (v, 0))

    # --- noreply ------------------------------------------------------------------------------
    def test_noreply(self):
        c = self.c
        c.send(b"set a 1 0 1 noreply\r\n1\r\n")
        c.send(b"add a 0 0 1 noreply\r\n2\r\n")
        c.send(b"add b 0 0 1 noreply\r\n2\r\n")
        c.send(b"replace b 0 0 1 noreply\r\n3\r\n")
        c.send(b"append b 0 0 1 noreply\r\n4\r\n")
        c.send(b"prepend b 0 0 1 noreply\r\n5\r\n")
        c.send(b"incr a 10 noreply\r\n")
        c.send(b"decr a 1 noreply\r\n")
        c.send(b"touch a 100 noreply\r\n")
        c.send(b"cas a 0 0 1 1 noreply\r\nz\r\n")
        c.send(b"set e 0 0 abc noreply\r\n")  # errors are silenced too
        c.send(b"incr a abc noreply\r\n")
        c.send(b"verbosity 1 noreply\r\n")
        c.send(b"verbosity noreply\r\n")
        c.send(b"delete zz noreply\r\n")
        self.assertTrue(c.nothing_within(0.3))
        self.assertEqual(self.get(b"a"), (b"10", 1))
        self.assertEqual(self.get(b"b"), (b"534", 0))
        c.send(b"delete b noreply\r\n")
        c.send(b"delete a 0 noreply\r\n")
        c.send(b"flush_all noreply\r\nflush_all 0 noreply\r\n")
        self.assertTrue(c.nothing_within(0.2))
        self.assertIsNone(self.get(b"a"))
        self.assertIsNone(self.get(b"b"))

    # --- expiry -------------------------------------------------------------------------------
    def test_expiry(self):
        now = int(time.time())
        self.set(b"e1", b"v", exp=1)
        self.set(b"e100", b"v", exp=100)
        self.set(b"eabs", b"v", exp=now + 100)
        self.set(b"epast", b"v", exp=now - 100)
        self.assertEqual(self.set(b"eneg", b"v", exp=-1), b"STORED\r\n")
        self.set(b"etouch", b"v")
        self.set(b"egat", b"v")
        self.set(b"eshort", b"v", exp=100)
        self.set(b"e30d", b"v", exp=2592000)
        self.assertIsNone(self.get(b"epast"))
        self.assertIsNone(self.get(b"eneg"))
        self.assertEqual(self.get(b"eabs"), (b"v", 0))
        self.assertEqual(self.get(b"e30d"), (b"v", 0))
        self.assertEqual(self.c.cmd(b"touch etouch -1\r\n"), b"TOUCHED\r\n")
        self.assertIsNone(self.get(b"etouch"))
        self.c.send(b"gat -1 egat\r\n")
        self.assertEqual(self.c.get_reply(), b"VALUE egat 0 1\r\nv\r\nEND\r\n")
        self.assertIsNone(self.get(b"egat"))
        self.assertEqual(self.c.cmd(b"touch eshort 1\r\n"), b"TOUCHED\r\n")
        time.sleep(2.2)
        self.assertIsNone(self.get(b"e1"))
        self.assertIsNone(self.get(b"eshort"))
        self.assertEqual(self.get(b"e100"), (b"v", 0))

    def test_flush_all_delay(self):
        self.set(b"f1", b"v")
        self.assertEqual(self.c.cmd(b"flush_all 2\r\n"), b"OK\r\n")
        self.assertEqual(self.get(b"f1"), (b"v", 0))
        time.sleep(2.2)
        self.assertIsNone(self.get(b"f1"))
        self.set(b"f2", b"v")  # items set after the flush are visible
        self.assertEqual(self.get(b"f2"), (b"v", 0))

    # --- misc commands ------------------------------------------------------------------------
    def stats(self, sub=b""):
        self.c.send(b"stats" + (b" " + sub if sub else b"") + b"\r\n")
        out = {}
        while True:
            ln = self.c.line()
            if ln == b"END\r\n":
                return out
            parts = ln.split(b" ", 2)
            self.assertEqual(parts[0], b"STAT")
            out[parts[1]] = parts[2].rstrip(b"\r\n")

    def test_stats_version_verbosity_quit(self):
        self.set(b"s", b"v")
        self.get(b"s")
        st = self.stats()
        for name in (b"pid", b"uptime", b"curr_connections", b"cmd_get", b"get_hits",
                     b"curr_items", b"bytes", b"evictions", b"limit_maxbytes", b"storage"):
            self.assertIn(name, st)
        self.assertGreaterEqual(int(st[b"curr_items"]), 1)  # flushed items are reclaimed lazily
        self.assertGreaterEqual(int(st[b"get_hits"]), 1)
        self.assertEqual(st[b"limit_maxbytes"], b"%d" % (64 << 20))
        sset = self.stats(b"settings")
        self.assertEqual(sset[b"maxbytes"], b"%d" % (64 << 20))
        self.assertEqual(sset[b"item_size_max"], b"%d" % ITEM_MAX)
        self.assertEqual(sset[b"tcpport"], b"%d" % self.srv.port)
        self.assertIn(b"curr_items", self.stats(b"storage"))
        self.assertEqual(self.c.cmd(b"stats reset\r\n"), b"RESET\r\n")
        self.assertEqual(self.stats()[b"cmd_get"], b"0")
        self.assertTrue(self.c.cmd(b"version\r\n").startswith(b"VERSION 1.6"))
        self.assertEqual(self.c.cmd(b"verbosity 1\r\n"), b"OK\r\n")
        self.assertEqual(self.c.cmd(b"verbosity 1 2\r\n"), b"OK\r\n")
        self.c.send(b"quit\r\n")
        self.assertTrue(self.c.is_closed())

    def test_http_request_closes(self):
        c = Conn(self.srv.port)
        c.send(b"GET / HTTP/1.0\r\n\r\n")
        self.assertTrue(c.is_closed())
        c.close()

    # --- framing ------------------------------------------------------------------------------
    SCRIPT = (b"set p1 0 0 5\r\nhello\r\nget p1\r\nincr p1 1\r\nset n 0 0 1\r\n7\r\n"
              b"incr n 3\r\nappend n 0 0 2\r\n00\r\ngets nothere\r\ndelete p1\r\nget p1 n\r\n"
              b"bogus\r\ntouch n 10\r\n")
    EXPECT = (b"STORED\r\nVALUE p1 0 5\r\nhello\r\nEND\r\n"
              b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\nSTORED\r\n"
              b"10\r\nSTORED\r\nEND\r\nDELETED\r\nVALUE n 0 4\r\n1000\r\nEND\r\nERROR\r\n"
              b"TOUCHED\r\n")

    def test_pipelined(self):
        self.c.send(self.SCRIPT * 1)
        self.assertEqual(self.c.exactly(len(self.EXPECT)), self.EXPECT)
        # 2000 commands in one write
        batch = b"".join(b"set k%d 0 0 %d\r\n%d\r\n" % (i, len(b"%d" % i), i) for i in range(1000))
        batch += b"".join(b"get k%d\r\n" % i for i in range(1000))
        self.c.send(batch)
        expect = b"STORED\r\n" * 1000 + b"".join(
            b"VALUE k%d 0 %d\r\n%d\r\nEND\r\n" % (i, len(b"%d" % i), i) for i in range(1000))
        self.assertEqual(self.c.exactly(len(expect)), expect)

    def test_fragmented(self):
        # one byte per write, with TCP_NODELAY so the pieces really arrive apart
        self.c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for b in self.SCRIPT:
            self.c.send(bytes([b]))
        self.assertEqual(self.c.exactly(len(self.EXPECT)), self.EXPECT)
        # random split points, bare "\n" line ends, a large value in pieces
        self.c.send(b"flush_all\r\n")
        self.assertEqual(self.c.line(), b"OK\r\n")
        v = os.urandom(200000)
        data = (self.SCRIPT + b"set big 0 0 %d\r\n%s\r\nget big\n" % (len(v), v)) * 3
        expect = (self.EXPECT + b"STORED\r\nVALUE big 0 %d\r\n%s\r\nEND\r\n" % (len(v), v))
        rnd = random.Random(7)
        i = 0
        while i < len(data):
            n = rnd.choice((1, 2, 3, 7, 100, 1500, 40000))
            self.c.send(data[i:i + n])
            i += n
        # the script leaves the same state behind each time, so all three rounds read alike
        self.assertEqual(self.c.exactly(3 * len(expect)), 3 * expect)

    # --- concurrency --------------------------------------------------------------------------
    def test_cas_race(self):
        self.set(b"ctr", b"0")
        ok = [0]
        lock = threading.Lock()

        def worker():
            c = Conn(self.srv.port)
            mine = 0
            for _ in range(150):
                c.send(b"gets ctr\r\n")
                ln = c.line()
                val = int(c.exactly(int(ln.split()[3]) + 2))
                cas = int(ln.split()[4])
                c.line()
                r = c.cmd(b"cas ctr 0 0 %d %d\r\n%d\r\n" % (len(b"%d" % (val + 1)), cas, val + 1))
                self.assertIn(r, (b"STORED\r\n", b"EXISTS\r\n"))
                mine += r == b"STORED\r\n"
            c.close()
            with lock:
                ok[0] += mine

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertGreater(ok[0], 0)
        self.assertEqual(self.get(b"ctr"), (b"%d" % ok[0], 0))

    def test_concurrent_incr(self):
        self.set(b"ic", b"0")

        def worker():
            c = Conn(self.srv.port)
            c.send(b"incr ic 1\r\n" * 500)
            for _ in range(500):
                c.line()
            c.close()

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(self.get(b"ic")[0].strip(), b"2000")

    def test_pymemcache_client(self):
        mc = Client(("127.0.0.1", self.srv.port), connect_timeout=5, timeout=5)
        mc.set_many({"a": b"1", "b": b"2", "c": b"3"})
        self.assertEqual(mc.get_many(["a", "b", "c", "d"]), {"a": b"1", "b": b"2", "c": b"3"})
        self.assertEqual(mc.incr("a", 41), 42)
        self.assertEqual(mc.decr("a", 2), 40)
        val, cas = mc.gets("b")
        self.assertTrue(mc.cas("b", b"x", cas))
        self.assertFalse(mc.cas("b", b"y", cas))
        self.assertTrue(mc.touch("c", 100))
        self.assertTrue(mc.delete("c"))
        self.assertIsNone(mc.get("c"))
        self.assertTrue(mc.add("c", b"new", noreply=False))
        self.assertFalse(mc.add("c", b"again", noreply=False))
        self.assertTrue(mc.append("c", b"!", noreply=False))
        self.assertEqual(mc.get("c"), b"new!")
        self.assertTrue(mc.version().startswith(b"1.6"))
        mc.close()


STATS_CONNS_LINE = re.compile(
    rb"^STAT (\d+):(addr|listen_addr|state|secs_since_last_cmd) (\S+)\r\n$")


def stats_conns(conn):
    """'stats conns' as {fd: {field: value}}, asserting memcached's line shapes and order."""
    conn.send(b"stats conns\r\n")
    out = {}
    order = {}
    while True:
        ln = conn.line()
        if ln == b"END\r\n":
            break
        m = STATS_CONNS_LINE.match(ln)
        assert m, "not a stats conns line: %r" % ln
        fd, field, value = int(m.group(1)), m.group(2).decode(), m.group(3).decode()
        assert field not in out.setdefault(fd, {}), "field repeated: %r" % ln
        out[fd][field] = value
        order.setdefault(fd, []).append(field)
    for fd, fields in order.items():
        want = ["addr", "state", "secs_since_last_cmd"]
        if "listen_addr" in fields:
            want.insert(1, "listen_addr")
        assert fields == want, "fd %d: fields %r" % (fd, fields)
    return out


class StatsConns(unittest.TestCase):
    """'stats conns' against memcached's own listing of the same situation."""

    def check(self, srv, listeners_expected, idle_states=("conn_read",)):
        asking, idle = Conn(srv.port), Conn(srv.port)
        try:
            self.assertEqual(idle.cmd(b"version\r\n")[:8], b"VERSION ")
            listing = stats_conns(asking)
            by_addr = {v["addr"]: (fd, v) for fd, v in listing.items() if "listen_addr" in v}
            here = "tcp:127.0.0.1:%d" % srv.port
            for conn, states in ((asking, ("conn_parse_cmd",)), (idle, idle_states)):
                ip, port = conn.sock.getsockname()[:2]
                addr = "tcp:%s:%d" % (ip, port)
                self.assertIn(addr, by_addr, "%s: %r" % (srv.name, listing))
                fd, info = by_addr[addr]
                self.assertEqual(info["listen_addr"], here)
                self.assertIn(info["state"], states)
                self.assertGreaterEqual(int(info["secs_since_last_cmd"]), 0)
            listeners = [v for v in listing.values() if "listen_addr" not in v]
            for v in listeners:
                self.assertEqual(v["addr"], here)
                self.assertEqual(v["state"], "conn_listening")
            self.assertEqual(bool(listeners), listeners_expected, "%s: %r" % (srv.name, listing))
            # a closed connection leaves the listing (its close is seen by another thread)
            gone = "tcp:%s:%d" % idle.sock.getsockname()[:2]
            idle.close()
            deadline = time.time() + 5
            while gone in {v["addr"] for v in stats_conns(asking).values()}:
                self.assertLess(time.time(), deadline, "closed connection still listed")
                time.sleep(0.02)
            # further tokens are ignored, as memcached does
            asking.send(b"stats conns extra\r\n")
            ln = asking.line()
            while ln != b"END\r\n":
                self.assertTrue(STATS_CONNS_LINE.match(ln), ln)
                ln = asking.line()
        finally:
            asking.close()
            idle.close()

    def test_matches_memcached(self):
        ref = start_memcached("-t", "2")
        try:
            # memcached may not have left its write state yet when the reply has arrived
            self.check(ref, True, ("conn_read", "conn_waiting", "conn_new_cmd", "conn_mwrite"))
        finally:
            ref.stop()
        srv = start_mcserver(BIN, "-t", "2")
        try:
            # the p99 engine owns its listeners and does not expose them (README.md)
            self.check(srv, not os.path.basename(BIN).endswith("-uring"))
        finally:
            self.assertEqual(srv.stop(), 0)


class Churn(unittest.TestCase):
    def test_concurrent_churn_keeps_values_intact(self):
        """4 clients set/get/delete values of many sizes in a store far too small for them, so
        eviction (and slab page moves) runs while values are pinned by in-flight gets; every
        value read must be exactly one that was written for that key."""
        srv = start_mcserver(BIN, "-m", "2", "-t", "4")
        errors = []
        hits = [0]

        def payload(key, tag, n):
            unit = b"%s:%d;" % (key, tag)
            return (unit * (n // len(unit) + 1))[:n]

        def intact(key, data):
            """data is a (possibly cut) payload(key, tag, len) for some tag"""
            head = key + b":"
            if not data.startswith(head):
                return False
            end = data.find(b";")
            if end < 0:  # cut before the first ';': only the tag's digits may follow
                return data[len(head):].isdigit() or len(data) == len(head)
            return data == payload(key, int(data[len(head):end]), len(data))

        def worker(seed):
            rnd = random.Random(seed)
            c = Conn(srv.port)
            # at least 3 s and at least 400 operations per client, so a slow (shared) machine
            # still exercises the churn; a hard cap keeps a stuck server from hanging the suite
            start = time.time()
            ops = 0
            try:
                while (time.time() < start + 3 or ops < 400) and time.time() < start + 60:
                    ops += 1
                    key = b"ch%d" % rnd.randrange(300)
                    op = rnd.random()
                    if op < 0.4:
                        n = rnd.choice([10, 100, 900, 2000, 30000, 200000])
                        v = payload(key, rnd.randrange(10**6), n)
                        r = c.cmd(b"set %s 0 0 %d\r\n%s\r\n" % (key, n, v))
                        if r not in (b"STORED\r\n", b"SERVER_ERROR out of memory storing object\r\n"):
                            errors.append(r)
                    elif op < 0.9:
                        keys = [b"ch%d" % rnd.randrange(300) for _ in range(rnd.randint(1, 5))]
                        c.send(b"get " + b" ".join(keys) + b"\r\n")
                        while True:
                            ln = c.line()
                            if ln == b"END\r\n":
                                break
                            k, n = ln.split()[1], int(ln.split()[3])
                            data = c.exactly(n + 2)[:-2]
                            hits[0] += 1
                            if not intact(k, data):
                                errors.append(b"corrupt value for " + k)
                    else:
                        r = c.cmd(b"delete %s\r\n" % key)
                        if r not in (b"DELETED\r\n", b"NOT_FOUND\r\n"):
                            errors.append(r)
            except Exception as e:  # a broken connection is a failure too
                errors.append(repr(e).encode())
            finally:
                c.close()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.assertTrue(srv.alive())
        finally:
            self.assertEqual(srv.stop(), 0)
        self.assertEqual(errors[:5], [])
        self.assertGreater(hits[0], 100)


class NoCas(unittest.TestCase):
    def test_disabled_cas(self):
        srv = start_mcserver(BIN, "-C", "-t", "1")
        try:
            c = Conn(srv.port)
            c.cmd(b"set k 0 0 1\r\nv\r\n")
            c.send(b"gets k\r\n")
            self.assertEqual(c.get_reply(), b"VALUE k 0 1 0\r\nv\r\nEND\r\n")
            self.assertEqual(c.cmd(b"cas k 0 0 1 0\r\nw\r\n"), b"EXISTS\r\n")
            self.assertEqual(c.cmd(b"flush_all\r\n"), b"OK\r\n")
            c.close()
        finally:
            self.assertEqual(srv.stop(signal.SIGINT), 0)


class Settings(unittest.TestCase):
    """-F, slabs automove and verbosity, with memcached 1.6.18's replies."""

    def test_flush_disabled(self):
        srv = start_mcserver(BIN, "-F", "-t", "1")
        try:
            c = Conn(srv.port)
            self.assertEqual(c.cmd(b"set k 0 0 1\r\nv\r\n"), b"STORED\r\n")
            for line in (b"flush_all\r\n", b"flush_all 0\r\n", b"flush_all abc\r\n"):
                self.assertEqual(c.cmd(line), b"CLIENT_ERROR flush_all not allowed\r\n")
            c.send(b"flush_all noreply\r\n")
            self.assertEqual(c.cmd(b"flush_all 1 2 3\r\n"), b"ERROR\r\n")
            self.assertEqual(c.cmd(b"get k\r\n"), b"VALUE k 0 1\r\n")
            self.assertEqual(c.exactly(8), b"v\r\nEND\r\n")
            c.send(b"stats settings\r\n")
            st = c.get_reply()
            self.assertIn(b"STAT flush_enabled no\r\n", st)
            c.close()
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_prealloc_backs_the_memory_limit_at_start(self):
        # memcached's -L: the whole -m is memory from the start (the store preallocates and
        # touches it), and the server serves as usual. Without -L the same -m costs memory
        # only as items arrive.
        rss = {}
        for flags in ((), ("-L",)):
            srv = start_mcserver(BIN, "-t", "1", "-m", "48", *flags)
            try:
                c = Conn(srv.port)
                self.assertEqual(c.cmd(b"set k 0 0 2\r\nhi\r\n"), b"STORED\r\n")
                self.assertEqual(c.cmd(b"get k\r\n"), b"VALUE k 0 2\r\n")
                self.assertEqual(c.exactly(9), b"hi\r\nEND\r\n")
                rss[flags] = srv.rss_kb()
                c.close()
            finally:
                self.assertEqual(srv.stop(), 0)
        grown = (rss[("-L",)] - rss[()]) / 1024
        self.assertGreaterEqual(grown, 40, "-L -m 48 added only %.1f MiB of RSS (%s)" % (grown, rss))

    def test_hashpower_sizes_the_table_up_front(self):
        # memcached's -o hashpower=N: the slab store starts with 2^N buckets, the p99 store
        # sizes its table for 1.5 x 2^N items (well above its -m 64 default of ~0.5M).
        srv = start_mcserver(BIN, "-t", "1", "-o", "hashpower=20")
        try:
            c = Conn(srv.port)
            self.assertEqual(c.cmd(b"set k 0 0 1\r\nv\r\n"), b"STORED\r\n")
            self.assertEqual(c.cmd(b"get k\r\n"), b"VALUE k 0 1\r\n")
            self.assertEqual(c.exactly(8), b"v\r\nEND\r\n")
            c.send(b"stats\r\n")
            st = dict(l.split(b" ")[1:3] for l in c.get_reply().split(b"\r\n") if l.startswith(b"STAT "))
            if b"p99_hash_bytes" in st:
                self.assertGreaterEqual(int(st[b"p99_hash_bytes"]), (3 << 20) // 2 * 8)
            else:
                self.assertEqual(st[b"hash_power_level"], b"20")
            c.close()
        finally:
            self.assertEqual(srv.stop(), 0)
        for bad in ("hashpower=11", "hashpower=33", "hashpower=x", "hashpower="):
            r = subprocess.run([BIN, "-U", "0", "-p", "0", "-o", bad], capture_output=True, timeout=10)
            self.assertNotEqual(r.returncode, 0, bad)
            self.assertIn(b"-o " + bad.encode(), r.stderr, bad)

    def test_slabs_automove_and_verbosity(self):
        srv = start_mcserver(BIN, "-t", "1")
        try:
            c = Conn(srv.port)
            cases = [(b"slabs automove 0", b"OK"), (b"slabs automove 2", b"OK"),
                     (b"slabs automove 3", b"ERROR"),
                     (b"slabs automove x", b"CLIENT_ERROR bad command line format"),
                     (b"slabs automove -1", b"CLIENT_ERROR bad command line format"),
                     (b"slabs automove", b"ERROR"), (b"slabs automove ratio 0.25", b"OK"),
                     (b"slabs automove ratio", b"ERROR"), (b"slabs automove ratio x", b"ERROR"),
                     (b"slabs foo", b"ERROR"), (b"verbosity", b"ERROR"),
                     (b"verbosity x", b"CLIENT_ERROR bad command line format"),
                     (b"verbosity -1", b"CLIENT_ERROR bad command line format"),
                     (b"verbosity 1 2", b"OK"), (b"verbosity 1 2 3", b"ERROR"),
                     (b"verbosity 7", b"OK")]
            for line, want in cases:
                self.assertEqual(c.cmd(line + b"\r\n"), want + b"\r\n", line)
            c.send(b"slabs automove 1 noreply\r\nslabs automove 9 noreply\r\n"
                   b"verbosity x noreply\r\n")
            c.send(b"stats settings\r\n")
            st = c.get_reply()
            self.assertIn(b"STAT slab_automove 1\r\n", st)
            self.assertIn(b"STAT slab_automove_ratio 0.25\r\n", st)
            self.assertIn(b"STAT verbosity 2\r\n", st)
            self.assertIn(b"STAT flush_enabled yes\r\n", st)
            c.close()
        finally:
            self.assertEqual(srv.stop(), 0)


class Eviction(unittest.TestCase):
    def test_lru_eviction_keeps_serving(self):
        srv = start_mcserver(BIN, "-m", "8", "-t", "1")
        try:
            c = Conn(srv.port)
            v = b"x" * 1000
            batch = b"".join(b"set ev%d 0 0 1000 noreply\r\n%s\r\n" % (i, v) for i in range(30000))
            c.send(batch)
            self.assertEqual(c.cmd(b"set last 0 0 1\r\n1\r\n"), b"STORED\r\n")
            c.send(b"get last ev29999 ev0\r\n")
            r = c.get_reply()
            self.assertTrue(r.startswith(b"VALUE last 0 1\r\n1\r\nVALUE ev29999 0 1000\r\n"), r[:60])
            self.assertNotIn(b"VALUE ev0 ", r)  # the oldest were evicted
            # other sizes still get memory after one size filled it
            big = b"y" * 100000
            self.assertEqual(c.cmd(b"set bigger 0 0 %d\r\n%s\r\n" % (len(big), big)), b"STORED\r\n")
            c.send(b"stats\r\n")
            st = b""
            while not st.endswith(b"END\r\n"):
                st += c.line()
            self.assertRegex(st, rb"STAT evictions [1-9]")
            c.close()
        finally:
            self.assertEqual(srv.stop(), 0)


if __name__ == "__main__":
    unittest.main()
