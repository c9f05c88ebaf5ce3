"""mcserver meta-protocol suite (memcached 1.6.18's mg, ms, md, ma, mn, me): every command and
flag, quiet-mode pipelines, malformed lines, with memcached's exact replies. Every expectation
(but for me's cls/size and the stats group lines, which are each store's own) holds for
memcached 1.6.18 itself (run with MCSERVER_BIN pointing at
a script that execs "memcached -u nobody -o no_lru_crawler,no_lru_maintainer": its LRU threads
pin items at random, which makes ma's T land or not); test_diff.py compares the two at random.

Run: MCSERVER_BIN=build/bin/mcserver-slab-epoll /usr/bin/python3 -m unittest test_meta
"""
import base64
import os
import re
import time
import unittest

from mcutil import Conn, retry_clock_ticks, start_mcserver

BIN = os.environ.get("MCSERVER_BIN", "build/bin/mcserver-slab-epoll")


@retry_clock_ticks
class Meta(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = start_mcserver(BIN, "-t", "2", "-m", "64")

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0

    def setUp(self):
        self.c = Conn(self.srv.port)
        self.assertEqual(self.c.cmd(b"flush_all\r\n"), b"OK\r\n")

    def tearDown(self):
        self.c.close()
        self.assertTrue(self.srv.alive())

    def line(self, data):
        return self.c.cmd(data)

    def quiet(self, data):
        """What a request answers before an mn (b"" when it stays quiet)."""
        self.c.send(data + b"mn\r\n")
        out = b""
        while True:
            ln = self.c.line()
            if ln == b"MN\r\n":
                return out
            out += ln

    def va(self, data):
        """A request answered by a VA line and its value: (line, value)."""
        ln = self.c.cmd(data)
        self.assertTrue(ln.startswith(b"VA "), ln)
        n = int(ln.split()[1])
        v = self.c.exactly(n + 2)
        self.assertEqual(v[-2:], b"\r\n")
        return ln, v[:-2]

    def cas(self, key):
        return int(re.search(rb" c(\d+)", self.line(b"mg %s c\r\n" % key)).group(1))

    # --- mn, mg -----------------------------------------------------------------------------
    def test_mn_and_quiet_pipeline(self):
        self.assertEqual(self.line(b"mn\r\n"), b"MN\r\n")
        self.assertEqual(self.line(b"mn extra tokens\r\n"), b"MN\r\n")
        # quiet: misses and stored replies vanish, mn marks the end of the batch
        self.c.send(b"ms a 1 q\r\n1\r\nms b 1 q\r\n2\r\nmg a v q\r\nmg zz v q\r\nmg b v q k\r\n"
                    b"md zz q\r\nmd a q\r\nmg a q\r\nmn\r\n")
        self.assertEqual(self.c.line(), b"VA 1\r\n")
        self.assertEqual(self.c.line(), b"1\r\n")
        self.assertEqual(self.c.line(), b"VA 1 kb\r\n")
        self.assertEqual(self.c.line(), b"2\r\n")
        self.assertEqual(self.c.line(), b"NF\r\n")  # q does not hide NF
        self.assertEqual(self.c.line(), b"MN\r\n")

    def test_mg_flags(self):
        self.assertEqual(self.line(b"ms k 5 F42 T100\r\nhello\r\n"), b"HD\r\n")
        cas = self.cas(b"k")
        self.assertEqual(self.line(b"mg k\r\n"), b"HD\r\n")
        ln, v = self.va(b"mg k v s f t c k O123\r\n")
        self.assertEqual(ln, b"VA 5 s5 f42 t100 c%d kk O123\r\n" % cas)
        self.assertEqual(v, b"hello")
        # reply fields follow the request's order; q and u change nothing on a hit
        self.assertEqual(self.line(b"mg k Oxy k f q u\r\n"), b"HD Oxy kk f42\r\n")
        self.assertEqual(self.line(b"mg k vv\r\n"), b"VA 5\r\n")  # only the first char counts
        self.c.exactly(7)
        self.assertEqual(self.line(b"mg missing\r\n"), b"EN\r\n")
        self.assertEqual(self.line(b"mg missing k O5 v s\r\n"), b"EN kmissing O5\r\n")

    def test_mg_ttl_touch(self):
        self.line(b"ms k 1\r\nx\r\n")
        self.assertEqual(self.line(b"mg k t\r\n"), b"HD t-1\r\n")
        self.assertEqual(self.line(b"mg k t T50\r\n"), b"HD t-1\r\n")  # t before T: old ttl
        self.assertEqual(self.line(b"mg k t\r\n"), b"HD t50\r\n")
        self.assertEqual(self.line(b"mg k T60 t\r\n"), b"HD t60\r\n")
        self.assertEqual(self.line(b"mg k T0 t\r\n"), b"HD t-1\r\n")
        self.assertRegex(self.line(b"mg k T%d t\r\n" % (int(time.time()) + 1000)),
                         rb"^HD t(998|999|1000|1001)\r\n$")
        # an absolute exptime: the server's clock ticks once a second and may lag the wall
        # clock by up to a second (memcached's too), so 1001 seconds can be left
        cas = self.cas(b"k")
        self.assertEqual(self.line(b"mg k T-1\r\n"), b"HD\r\n")  # expired by it
        self.assertEqual(self.line(b"mg k\r\n"), b"EN\r\n")
        self.line(b"ms k 1\r\nx\r\n")
        self.assertNotEqual(self.cas(b"k"), cas)

    def test_base64_keys(self):
        key = b"bin\x00\x01key"
        b64 = base64.b64encode(key)
        self.assertEqual(self.line(b"ma %s b N0 J5 k\r\n" % b64), b"HD k%s b\r\n" % b64)
        ln, v = self.va(b"mg %s b v k\r\n" % b64)
        # a key stored by ma/mg is not marked binary: memcached prints it raw
        self.assertEqual((ln, v), (b"VA 1 k%s\r\n" % key, b"5"))
        self.assertEqual(self.line(b"mg Zm9v b k\r\n"), b"EN kZm9v b\r\n")
        self.assertEqual(self.quiet(b"md %s b k q\r\n" % b64), b"")
        self.assertEqual(self.line(b"md %s b k\r\n" % b64), b"NF k%s b\r\n" % b64)
        for bad in (b"Zm9v=", b"Zm9v==", b"Z"):
            self.assertEqual(self.line(b"mg %s b\r\n" % bad), b"CLIENT_ERROR error decoding key\r\n")
        self.c.send(b"set foo 0 0 2\r\nhi\r\n")
        self.assertEqual(self.c.line(), b"STORED\r\n")
        self.assertEqual(self.va(b"mg Zm9v b v\r\n")[1], b"hi")

    # --- ms -----------------------------------------------------------------------------------
    def test_ms_modes(self):
        s = self.line
        self.assertEqual(s(b"ms k 2 ME\r\naa\r\n"), b"HD\r\n")
        self.assertEqual(s(b"ms k 2 ME\r\nbb\r\n"), b"NS\r\n")
        self.assertEqual(s(b"ms k 2 MA\r\ncc\r\n"), b"HD\r\n")
        self.assertEqual(s(b"ms k 2 MP\r\n00\r\n"), b"HD\r\n")
        self.assertEqual(self.va(b"mg k v\r\n")[1], b"00aacc")
        self.assertEqual(s(b"ms k 1 MR F3\r\nr\r\n"), b"HD\r\n")
        self.assertEqual(s(b"ms nope 1 MR\r\nr\r\n"), b"NS\r\n")
        self.assertEqual(s(b"ms nope 1 MA\r\nr\r\n"), b"NS\r\n")
        self.assertEqual(s(b"ms nope 1 MP\r\nr\r\n"), b"NS\r\n")
        self.assertEqual(s(b"ms k 1 MS\r\ns\r\n"), b"HD\r\n")
        self.assertEqual(s(b"mg k f\r\n"), b"HD f0\r\n")  # set replaces the flags
        self.assertEqual(s(b"ms k 1 MZ\r\nz\r\n"), b"CLIENT_ERROR invalid mode for ms M token\r\n")
        self.assertEqual(s(b"ms k 1 Ms\r\nz\r\n"), b"CLIENT_ERROR invalid mode for ms M token\r\n")
        self.assertEqual(s(b"ms k 1 MSS\r\nz\r\n"), b"CLIENT_ERROR incorrect length for M token\r\n")
        self.assertEqual(self.va(b"mg k v\r\n")[1], b"s")

    def test_ms_cas_and_return_flags(self):
        s = self.line
        ln = s(b"ms k 1 c k O9\r\na\r\n")
        m = re.match(rb"HD c(\d+) kk O9\r\n$", ln)
        self.assertTrue(m, ln)
        cas = int(m.group(1))
        self.assertEqual(self.cas(b"k"), cas)
        self.assertEqual(s(b"ms k 1 C%d\r\nb\r\n" % (cas + 1000)), b"EX\r\n")
        self.assertEqual(s(b"ms k 1 C0\r\nb\r\n"), b"EX\r\n")
        self.assertEqual(s(b"ms k 1 C%d c k\r\nb\r\n" % cas)[:4], b"HD c")
        self.assertEqual(s(b"ms nope 1 C5 c O1\r\nb\r\n"), b"NF c0 O1\r\n")
        self.assertEqual(s(b"ms k 1 MR C1 q\r\nb\r\n"), b"EX\r\n")  # q hides only HD
        self.assertEqual(s(b"ms k 1 ME c\r\nb\r\n"), b"NS c0\r\n")
        self.c.send(b"ms k 1 q\r\nz\r\n")
        self.assertEqual(s(b"mg k v s\r\n"), b"VA 1 s1\r\n")
        self.c.exactly(3)

    def test_ms_flags_and_ttl(self):
        self.assertEqual(self.line(b"ms k 3 F4294967295 T30 I\r\nabc\r\n"), b"HD\r\n")
        self.assertEqual(self.line(b"mg k f t s\r\n"), b"HD f4294967295 t30 s3\r\n")
        self.assertEqual(self.line(b"ms k 0 T-1\r\n\r\n"), b"HD\r\n")
        self.assertEqual(self.line(b"mg k\r\n"), b"EN\r\n")
        self.assertEqual(self.line(b"ms k 0\r\n\r\n"), b"HD\r\n")
        self.assertEqual(self.va(b"mg k v\r\n"), (b"VA 0\r\n", b""))

    def test_ms_errors_swallow_the_value(self):
        s = self.line
        # refused before the datalen is read: the value line is parsed as a command
        self.assertEqual(s(b"ms\r\n"), b"ERROR\r\n")
        self.assertEqual(s(b"ms k\r\n"), b"CLIENT_ERROR bad command line format\r\n")
        self.assertEqual(s(b"ms k x\r\n"), b"CLIENT_ERROR bad command line format\r\n")
        self.assertEqual(s(b"ms k -1\r\n"), b"CLIENT_ERROR bad command line format\r\n")
        self.assertEqual(s(b"ms k 2 a b c d e f g h i j k l m n o p q\r\n"),
                         b"CLIENT_ERROR options flags too long\r\n")
        # refused after it: the value is swallowed
        for flags, err in ((b"S2", b"invalid flag"), (b"Tx", b"bad token in command line format"),
                           (b"Fx", b"bad command line format"), (b"q q", b"duplicate flag"),
                           (b"O" + b"x" * 40, b"opaque token too long"),
                           (b"MZ O" + b"x" * 40, b"invalid mode for ms M token")):
            self.assertEqual(s(b"ms k 2 %s\r\nxx\r\n" % flags), b"CLIENT_ERROR %s\r\n" % err, flags)
        self.assertEqual(s(b"mn\r\n"), b"MN\r\n")
        self.assertEqual(s(b"mg k\r\n"), b"EN\r\n")
        # bad data chunk: reported even in quiet mode, the rest parsed as a command
        self.c.send(b"ms k 2 q\r\nabcd\r\n")
        self.assertEqual(self.c.line(), b"CLIENT_ERROR bad data chunk\r\n")
        self.assertEqual(self.c.line(), b"ERROR\r\n")
        big = 2 * 1024 * 1024
        self.c.send(b"ms k 1\r\nv\r\nms k %d T0\r\n" % big + b"z" * big + b"\r\nmg k\r\n")
        self.assertEqual(self.c.line(), b"HD\r\n")
        self.assertEqual(self.c.line(), b"SERVER_ERROR object too large for cache\r\n")
        self.assertEqual(self.c.line(), b"EN\r\n")  # the old value is gone too

    # --- md -------------------------------------------------------------------------------------
    def test_md(self):
        s = self.line
        s(b"ms k 1\r\nx\r\n")
        self.assertEqual(s(b"md k O1 k\r\n"), b"HD O1 kk\r\n")
        self.assertEqual(s(b"md k k O1\r\n"), b"NF kk O1\r\n")
        s(b"ms k 1\r\nx\r\n")
        self.c.send(b"md k q\r\nmd k q\r\nmn\r\n")
        self.assertEqual(self.c.line(), b"NF\r\n")
        self.assertEqual(self.c.line(), b"MN\r\n")
        self.assertEqual(s(b"md\r\n"), b"ERROR\r\n")
        self.assertEqual(s(b"md k q q\r\n"), b"CLIENT_ERROR invalid or duplicate flag\r\n")
        self.assertEqual(s(b"md k Z\r\n"), b"CLIENT_ERROR invalid or duplicate flag\r\n")
        self.assertEqual(s(b"md k O%s\r\n" % (b"x" * 40)), b"CLIENT_ERROR opaque token too long\r\n")
        self.assertEqual(s(b"md %s\r\n" % (b"k" * 251)), b"CLIENT_ERROR bad command line format\r\n")

    # --- ma -------------------------------------------------------------------------------------
    def test_ma(self):
        s = self.line
        self.assertEqual(s(b"ma n\r\n"), b"NF\r\n")
        self.assertEqual(s(b"ma n q O1 k\r\n"), b"NF O1 kn\r\n")
        ln, v = self.va(b"ma n N0 J5 v t\r\n")
        self.assertEqual((ln, v), (b"VA 1 t-1\r\n", b"5"))
        self.assertEqual(self.va(b"ma n v\r\n")[1], b"6")
        self.assertEqual(self.va(b"ma n v D10\r\n")[1], b"16")
        self.assertEqual(self.va(b"ma n v MD D7\r\n")[1], b"9")
        self.assertEqual(self.va(b"ma n v M- D100\r\n")[1], b"0")  # decr stops at 0
        self.assertEqual(self.va(b"ma n v M+ D18446744073709551615\r\n")[1], b"18446744073709551615")
        self.assertEqual(self.va(b"ma n v MI D2\r\n")[1], b"1")  # incr wraps
        ln = s(b"ma n c\r\n")
        cas = int(re.match(rb"HD c(\d+)\r\n$", ln).group(1))
        self.assertEqual(self.cas(b"n"), cas)
        self.assertEqual(self.quiet(b"ma n q\r\n"), b"")  # q hides HD
        # the 20-digit value was rewritten in place: shorter results are space-padded
        self.assertEqual(self.va(b"mg n v\r\n")[1], b"3".ljust(20))
        self.assertEqual(s(b"ma n T100 t k O7\r\n"), b"HD t100 kn O7\r\n")
        self.assertEqual(s(b"mg n t\r\n"), b"HD t100\r\n")
        # vivify: N's ttl, then T if it comes later
        self.assertEqual(s(b"ma v1 N30 t\r\n"), b"HD t30\r\n")
        self.assertEqual(s(b"ma v2 N30 T60 t q\r\n"), b"HD t60\r\n")  # created: q does not hide
        self.assertEqual(s(b"mg v2 t\r\n"), b"HD t60\r\n")
        s(b"ms t 2\r\nhi\r\n")
        self.assertEqual(s(b"ma t\r\n"),
                         b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
        for bad, err in ((b"MS", b"invalid mode for ma M token"), (b"Dx", b"invalid or duplicate flag"),
                         (b"J-1 N0", b"invalid or duplicate flag"), (b"Z", b"invalid or duplicate flag")):
            self.assertEqual(s(b"ma n %s\r\n" % bad), b"CLIENT_ERROR %s\r\n" % err)
        # a too-long opaque is found after the arithmetic, which has happened
        self.assertEqual(s(b"ma n O%s\r\n" % (b"x" * 40)), b"CLIENT_ERROR opaque token too long\r\n")
        self.assertEqual(self.va(b"mg n v\r\n")[1], b"5".ljust(20))

    def test_malformed_and_limits(self):
        s = self.line
        for line, want in ((b"mg\r\n", b"ERROR"), (b"mx k\r\n", b"ERROR"),
                           (b"mg k v v\r\n", b"CLIENT_ERROR duplicate flag"),
                           (b"mg k E5\r\n", b"CLIENT_ERROR invalid flag"),
                           (b"mg k \xff\r\n", b"CLIENT_ERROR duplicate flag"),
                           (b"mg k Tx\r\n", b"CLIENT_ERROR bad token in command line format"),
                           (b"mg k a b c d e f g h i j k l m n o p q r\r\n",
                            b"CLIENT_ERROR options flags are too long"),
                           (b"mg %s v\r\n" % (b"k" * 251), b"CLIENT_ERROR bad command line format"),
                           (b"mg k O%s\r\n" % (b"x" * 32), b"CLIENT_ERROR opaque token too long"),
                           (b"mg k q Tx\r\n", b"CLIENT_ERROR bad token in command line format")):
            self.assertEqual(s(line), want + b"\r\n", line)
        self.assertEqual(s(b"mg %s\r\n" % (b"k" * 250)), b"EN\r\n")
        self.assertEqual(s(b"mg k O%s\r\n" % (b"x" * 31)), b"EN O%s\r\n" % (b"x" * 31))

    # --- per-item state: h l N R W X Z, ms b I, md C I, ma C, me ------------------------------
    def test_mg_hit_and_last_access(self):
        s = self.line
        s(b"ms k 1\r\nx\r\n")
        self.assertEqual(s(b"mg k h l\r\n"), b"HD h0 l0\r\n")  # state before this read
        self.assertEqual(s(b"mg k h\r\n"), b"HD h1\r\n")
        s(b"ms u 1\r\nx\r\n")
        self.assertEqual(s(b"mg u u h\r\n"), b"HD h0\r\n")  # u: not counted as a read
        self.assertEqual(s(b"mg u h\r\n"), b"HD h0\r\n")
        self.assertEqual(s(b"mg u h\r\n"), b"HD h1\r\n")
        s(b"ms t 1\r\nx\r\n")
        self.assertEqual(s(b"touch t 100\r\n"), b"TOUCHED\r\n")
        self.assertEqual(s(b"mg t h\r\n"), b"HD h1\r\n")  # touch reads, as in memcached
        self.assertEqual(s(b"incr t 1\r\n"), b"CLIENT_ERROR cannot increment or decrement "
                         b"non-numeric value\r\n")
        s(b"ms n 1\r\n5\r\n")
        self.assertEqual(s(b"incr n 1\r\n"), b"6\r\n")
        self.assertEqual(s(b"mg n h\r\n"), b"HD h0\r\n")  # incr does not
        time.sleep(2.1)
        ln = s(b"mg k l h\r\n")
        self.assertRegex(ln, rb"^HD l[23] h1\r\n$")  # seconds since written

    def test_mg_vivify_and_win_tokens(self):
        s = self.line
        # N on a miss: an empty item, this client wins the token, later ones see Z
        self.assertEqual(s(b"mg n N30 s t v k\r\n"), b"VA 0 s0 t30 kn W\r\n")
        self.assertEqual(self.c.line(), b"\r\n")
        self.assertEqual(s(b"mg n N30 t\r\n"), b"HD t30 Z\r\n")
        self.assertEqual(s(b"mg n\r\n"), b"HD Z\r\n")
        self.assertEqual(s(b"ms n 1\r\nv\r\n"), b"HD\r\n")  # a write clears the marks
        self.assertEqual(s(b"mg n\r\n"), b"HD\r\n")
        self.assertEqual(s(b"mg n2 N0 T30 t\r\n"), b"HD t30 W\r\n")  # T after N sets the ttl
        self.assertEqual(s(b"mg n3 T30 N0 t\r\n"), b"HD t-1 W\r\n")
        self.assertEqual(s(b"mg n4 N30 q\r\n"), b"HD W\r\n")  # created: q does not hide it
        # R: win once when the remaining ttl is below the token's
        s(b"ms r 1 T100\r\nx\r\n")
        self.assertEqual(s(b"mg r R50\r\n"), b"HD\r\n")
        self.assertEqual(s(b"mg r R200 t\r\n"), b"HD t100 W\r\n")
        self.assertEqual(s(b"mg r R200\r\n"), b"HD Z\r\n")
        s(b"ms r0 1\r\nx\r\n")
        self.assertEqual(s(b"mg r0 R200\r\n"), b"HD\r\n")  # no ttl: never wins
        s(b"ms r1 1 T100\r\nx\r\n")
        self.assertEqual(s(b"mg r1 T10 R50\r\n"), b"HD W\r\n")  # R sees the T before it
        s(b"ms r2 1 T100\r\nx\r\n")
        self.assertEqual(s(b"mg r2 R50 T10\r\n"), b"HD\r\n")
        self.assertEqual(s(b"mg r2 t\r\n"), b"HD t10\r\n")
        # a too-long opaque fails the request after the read: no token is handed out
        self.assertEqual(s(b"mg n5 N30 O%s\r\n" % (b"x" * 40)),
                         b"CLIENT_ERROR opaque token too long\r\n")
        self.assertEqual(s(b"mg n5 t\r\n"), b"HD t30\r\n")  # N before O was applied
        self.assertEqual(s(b"mg n6 O%s N30\r\n" % (b"x" * 40)),
                         b"CLIENT_ERROR opaque token too long\r\n")
        self.assertEqual(s(b"mg n6 t\r\n"), b"HD t-1\r\n")  # N after it was not

    def test_md_invalidate_and_cas(self):
        s = self.line
        s(b"ms k 1 T100\r\nx\r\n")
        cas = self.cas(b"k")
        self.assertEqual(s(b"md k C%d q\r\n" % (cas + 1)), b"EX\r\n")  # q does not hide EX
        self.assertEqual(s(b"md k C0 k\r\n"), b"EX kk\r\n")
        self.assertEqual(s(b"md k I T30 q\r\nmn\r\n"), b"MN\r\n")  # marked stale, not deleted
        cas2 = int(re.search(rb" c(\d+)", s(b"mg k c t\r\n")).group(1))
        self.assertNotEqual(cas2, cas)  # a new cas
        self.assertEqual(s(b"mg k t c\r\n"), b"HD t30 c%d Z X\r\n" % cas2)
        ln, v = self.va(b"mg k v\r\n")
        self.assertEqual((ln, v), (b"VA 1 Z X\r\n", b"x"))
        self.assertEqual(s(b"md k I\r\n"), b"HD\r\n")  # the token is handed out again
        self.assertEqual(s(b"mg k\r\n"), b"HD X W\r\n")
        # ms I with an older cas stores the late value, still stale, keeping the token mark
        self.assertEqual(s(b"ms k 1 C%d I\r\ny\r\n" % cas), b"HD\r\n")
        self.assertEqual(self.va(b"mg k v t\r\n"), (b"VA 1 t30 Z X\r\n", b"y"))
        cur = self.cas(b"k")
        self.assertEqual(s(b"ms k 1 C%d I\r\nz\r\n" % (cur + 1)), b"EX\r\n")  # newer: refused
        self.assertEqual(s(b"ms k 1 C%d I T0\r\nz\r\n" % cur), b"HD\r\n")  # match: plain store
        self.assertEqual(s(b"mg k t\r\n"), b"HD t-1\r\n")
        self.assertEqual(s(b"md k C%d\r\n" % self.cas(b"k")), b"HD\r\n")
        self.assertEqual(s(b"mg k\r\n"), b"EN\r\n")
        self.assertEqual(s(b"md k I\r\n"), b"NF\r\n")

    def test_cas_checked_append_and_arithmetic(self):
        s = self.line
        s(b"ms k 1\r\na\r\n")
        cas = self.cas(b"k")
        self.assertEqual(s(b"ms k 1 MA C%d\r\nb\r\n" % (cas + 1)), b"EX\r\n")
        self.assertEqual(s(b"ms k 1 MA C%d c\r\nb\r\n" % cas)[:4], b"HD c")
        self.assertEqual(s(b"ms k 1 MP C0\r\nz\r\n"), b"HD\r\n")  # C0: no check
        self.assertEqual(s(b"ms k 1 MP C1 q\r\nz\r\n"), b"EX\r\n")
        self.assertEqual(self.va(b"mg k v\r\n")[1], b"zab")
        self.assertEqual(s(b"ms k 1 ME C1\r\nz\r\n"), b"NS\r\n")  # add ignores C
        s(b"ms n 1\r\n5\r\n")
        cas = self.cas(b"n")
        self.assertEqual(s(b"ma n C%d O9 k\r\n" % (cas + 1)), b"EX O9 kn\r\n")
        self.assertEqual(self.va(b"ma n C%d v\r\n" % cas)[1], b"6")
        self.assertEqual(self.va(b"ma n C0 v\r\n")[1], b"7")

    def test_base64_key_mark(self):
        s = self.line
        key = b"bin\x00key"
        b64 = base64.b64encode(key)
        self.assertEqual(s(b"ms %s 1 b k\r\nx\r\n" % b64), b"HD k%s b\r\n" % b64)
        # the item is marked: k is base64 whatever the request, as in memcached
        self.assertEqual(s(b"mg %s b k\r\n" % b64), b"HD k%s b\r\n" % b64)
        self.assertEqual(s(b"md %s b k q\r\nmn\r\n" % b64), b"MN\r\n")
        self.assertEqual(s(b"ms Zm9v 1 b\r\nx\r\n"), b"HD\r\n")
        self.assertEqual(s(b"mg foo k\r\n"), b"HD kZm9v b\r\n")
        self.assertEqual(s(b"me foo\r\n").split(b" ")[:2], [b"ME", b"Zm9v"])
        self.assertEqual(s(b"ms Zm9v= 1 b\r\nx\r\n"), b"CLIENT_ERROR error decoding key\r\n")

    def test_me(self):
        s = self.line
        s(b"ms k 3 T100\r\nabc\r\n")
        cas = self.cas(b"k")
        ln = s(b"me k\r\n")
        m = re.match(rb"^ME k exp=(-?\d+) la=(\d+) cas=(\d+) fetch=(yes|no) cls=(\d+) "
                     rb"size=(\d+)\r\n$", ln)
        self.assertIsNotNone(m, ln)
        self.assertIn(int(m.group(1)), (-100, -99))  # memcached prints -(seconds left)
        self.assertLessEqual(int(m.group(2)), 1)
        self.assertEqual((int(m.group(3)), m.group(4)), (cas, b"yes"))  # mg c fetched it
        self.assertGreaterEqual(int(m.group(6)), 4)
        s(b"ms f 1\r\nx\r\n")
        self.assertRegex(s(b"me f\r\n"), rb"^ME f exp=-1 la=\d+ cas=\d+ fetch=no ")
        self.assertRegex(s(b"me f\r\n"), rb" fetch=no ")  # me does not count as a read
        self.assertEqual(s(b"me nosuch\r\n"), b"EN\r\n")
        self.assertRegex(s(b"me Zg== b\r\n"), rb"^ME f exp=-1 ")
        self.assertRegex(s(b"me f x y\r\n"), rb"^ME f ")
        for bad in (b"me\r\n", b"me %s\r\n" % (b"k" * 251), b"me f b\r\n"):
            self.assertEqual(s(bad), b"CLIENT_ERROR bad command line format\r\n", bad)

    def test_stats_items_slabs_sizes(self):
        s = self.line
        s(b"ms k 3\r\nabc\r\n")
        for group in (b"items", b"slabs"):
            self.c.send(b"stats %s\r\n" % group)
            r = self.c.get_reply()
            lines = r.split(b"\r\n")[:-2]
            self.assertTrue(lines, r)
            for ln in lines:
                self.assertRegex(ln, rb"^STAT [a-z_:0-9]+ \d+$")
        self.c.send(b"stats items\r\n")
        self.assertRegex(self.c.get_reply(), rb"STAT items:1:number [1-9]\d*\r\n")
        self.c.send(b"stats slabs\r\n")
        self.assertRegex(self.c.get_reply(),
                         rb"STAT active_slabs 1\r\nSTAT total_malloced [1-9]\d*\r\nEND\r\n$")
        self.assertEqual(s(b"stats sizes\r\n"), b"STAT sizes_status disabled\r\n")
        self.assertEqual(self.c.line(), b"END\r\n")

    def test_mixed_with_classic(self):
        s = self.line
        self.assertEqual(s(b"set k 7 0 3\r\nabc\r\n"), b"STORED\r\n")
        self.c.send(b"gets k\r\n")
        r = self.c.get_reply()
        cas = int(r.split(b"\r\n")[0].split()[4])
        self.assertEqual(s(b"mg k f c s\r\n"), b"HD f7 c%d s3\r\n" % cas)
        self.assertEqual(s(b"ms k 1 C%d F9\r\nz\r\n" % cas), b"HD\r\n")
        self.c.send(b"get k\r\n")
        self.assertEqual(self.c.get_reply(), b"VALUE k 9 1\r\nz\r\nEND\r\n")
        self.assertEqual(s(b"incr k 1\r\n"),
                         b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
        self.assertEqual(s(b"ma c N0 J10\r\n"), b"HD\r\n")
        self.assertEqual(s(b"incr c 5\r\n"), b"15\r\n")
        self.assertEqual(s(b"md c\r\n"), b"HD\r\n")
        self.assertEqual(s(b"delete c\r\n"), b"NOT_FOUND\r\n")


if __name__ == "__main__":
    unittest.main()
