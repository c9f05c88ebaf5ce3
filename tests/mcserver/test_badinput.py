"""Bad input: each case gets memcached's reply or a clean close, and the server keeps serving
other clients with bounded memory.

Run: MCSERVER_BIN=build/bin/mcserver-slab-epoll /usr/bin/python3 -m unittest test_badinput
"""
import os
import random
import resource
import selectors
import socket
import subprocess
import threading
import time
import unittest
import warnings

from mcutil import Conn, start_mcserver

BIN = os.environ.get("MCSERVER_BIN", "build/bin/mcserver-slab-epoll")
RSS_SLACK_KB = 64 * 1024  # growth allowed on top of the item memory during a hostile case


class BadInput(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = start_mcserver(BIN, "-t", "2", "-m", "64", "-c", "4096")

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0

    def setUp(self):
        warnings.simplefilter("ignore", ResourceWarning)
        self.rss0 = self.srv.rss_kb()

    def tearDown(self):
        self.assertTrue(self.srv.alive(), "server died")
        self.assert_serving()
        self.assertLess(self.srv.rss_kb() - self.rss0, RSS_SLACK_KB, "memory grew")

    def assert_serving(self):
        c = Conn(self.srv.port)
        self.assertEqual(c.cmd(b"set probe 0 0 2\r\nok\r\n"), b"STORED\r\n")
        c.send(b"get probe\r\n")
        self.assertEqual(c.get_reply(), b"VALUE probe 0 2\r\nok\r\nEND\r\n")
        c.close()

    def test_garbage(self):
        rnd = random.Random(3)
        for i in range(30):
            c = Conn(self.srv.port)
            junk = bytes(rnd.randrange(1, 256) for _ in range(rnd.randint(1, 4000)))
            if i % 2:
                junk = junk.replace(b"\n", b"") + b"\r\n"
            if junk[0] == 0x80:
                junk = b"x" + junk
            c.send(junk)
            # either memcached-style error lines, or a close (line too long)
            c.sock.settimeout(1.0)
            try:
                data = c.sock.recv(65536)
                for ln in data.split(b"\r\n")[:-1]:
                    self.assertTrue(ln == b"ERROR" or ln.startswith(b"CLIENT_ERROR")
                                    or ln.startswith(b"SERVER_ERROR"), ln[:80])
            except (socket.timeout, ConnectionResetError):
                pass
            c.close()

    def test_huge_declared_length(self):
        c = Conn(self.srv.port)
        c.send(b"set k 0 0 104857600\r\n")
        self.assertEqual(c.line(), b"SERVER_ERROR object too large for cache\r\n")
        # the server swallows the declared bytes: send 8 MB of them and stop
        chunk = b"z" * (1 << 20)
        for _ in range(8):
            c.send(chunk)
        c.close()
        c = Conn(self.srv.port)
        self.assertEqual(c.cmd(b"set k 0 0 2147483647\r\n"),
                         b"CLIENT_ERROR bad command line format\r\n")
        c.close()

    def test_megabyte_line_without_newline(self):
        c = Conn(self.srv.port)
        try:
            c.send(b"x" * (1 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.assertTrue(c.is_closed(), "a 1 MB line without newline must close the connection")
        c.close()
        # a long get line (many keys) is allowed, like memcached's large multigets
        c = Conn(self.srv.port)
        keys = b" ".join(b"key%d" % i for i in range(20000))
        c.send(b"get " + keys + b"\r\n")
        self.assertEqual(c.line(), b"END\r\n")
        c.close()

    def test_binary_protocol_magic(self):
        c = Conn(self.srv.port)
        # a binary-protocol GET request header: magic 0x80, opcode 0, key length 1
        c.send(bytes([0x80, 0x00, 0x00, 0x01]) + bytes(20) + b"k")
        self.assertTrue(c.is_closed(), "binary protocol is not spoken: expect a clean close")
        c.close()

    def test_thousands_of_connections(self):
        opened = 0
        for _ in range(6):
            socks = []
            for i in range(500):
                s = socket.create_connection(("127.0.0.1", self.srv.port))
                if i % 3 == 0:
                    s.send(b"get partial")  # a request cut short
                elif i % 3 == 1:
                    s.send(b"set k 0 0 10\r\nabc")  # a value cut short
                socks.append(s)
            opened += len(socks)
            for s in socks:
                s.close()
        self.assertEqual(opened, 3000)
        deadline = time.time() + 5
        while time.time() < deadline:
            c = Conn(self.srv.port)
            c.send(b"stats\r\n")
            st = b""
            while not st.endswith(b"END\r\n"):
                st += c.line()
            c.close()
            curr = int(st.split(b"STAT curr_connections ")[1].split(b"\r\n")[0])
            if curr <= 2:
                break
            time.sleep(0.1)
        self.assertLessEqual(curr, 2, "connections were not released")

    def test_client_that_never_reads(self):
        c = Conn(self.srv.port)
        v = b"v" * 100000
        self.assertEqual(c.cmd(b"set bigv 0 0 %d\r\n%s\r\n" % (len(v), v)), b"STORED\r\n")
        hog = socket.create_connection(("127.0.0.1", self.srv.port))
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        hog.setblocking(False)
        req = b"get bigv\r\n" * 1000
        sent = 0
        deadline = time.time() + 3
        # asks for up to 500 GB of replies with 50 MB of requests; socket buffers hold a few MB
        while time.time() < deadline and sent < 5000 * len(req):
            try:
                sent += hog.send(req)
            except BlockingIOError:
                time.sleep(0.01)
        # the server stopped reading it; everyone else is still served
        self.assertLess(sent, 5000 * len(req), "server kept reading a client that never reads")
        self.assert_serving()
        self.assertLess(self.srv.rss_kb() - self.rss0, RSS_SLACK_KB)
        hog.close()
        c.close()

    def test_connection_limit(self):
        srv = start_mcserver(BIN, "-t", "1", "-c", "5")
        time.sleep(0.3)  # let the server see the start-up probe connection go away
        try:
            conns = [Conn(srv.port) for _ in range(5)]
            for c in conns:
                self.assertEqual(c.cmd(b"version\r\n")[:8], b"VERSION ")
            extra = Conn(srv.port)
            self.assertEqual(extra.line(), b"ERROR Too many open connections\r\n")
            self.assertTrue(extra.is_closed())
            extra.close()
            conns.pop().close()
            time.sleep(0.2)
            again = Conn(srv.port)
            self.assertEqual(again.cmd(b"version\r\n")[:8], b"VERSION ")
            again.close()
            for c in conns:
                c.close()
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_out_of_fds_refuses_clients_without_spinning(self):
        # With the process out of descriptors, every waiting client must still be answered
        # (served, or told "ERROR Too many open connections" and closed) and the workers must
        # not spin on a listener they cannot accept from. Four workers race for the spare
        # descriptor kept for this, under a burst of connections from four threads; the race
        # lost it in 6 of 7 single rounds before it was fixed, so a few rounds are run.
        for _ in range(4):
            self.out_of_fds_round()

    def out_of_fds_round(self):
        srv = start_mcserver(BIN, "-t", "4", "-c", "1024")
        time.sleep(0.3)
        clients = []
        try:
            pid = srv.proc.pid
            open_fds = len(os.listdir("/proc/%d/fd" % pid))
            _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_fds + 8, hard))
            lock = threading.Lock()

            def burst():
                mine = [socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                        for _ in range(50)]
                with lock:
                    clients.extend(mine)

            threads = [threading.Thread(target=burst) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            # every client asks; each must get VERSION, or the refusal and a close
            replies = {}
            sel = selectors.DefaultSelector()
            for s in clients:
                s.setblocking(False)
                try:
                    s.send(b"version\r\n")
                except OSError:
                    pass  # refused and closed already: its reply is still readable
                sel.register(s, selectors.EVENT_READ)
                replies[s] = b""
            pending = set(clients)

            def collect(secs):
                deadline = time.time() + secs
                while pending and time.time() < deadline:
                    for key, _ in sel.select(timeout=0.2):
                        s = key.fileobj
                        try:
                            d = s.recv(4096)
                        except (ConnectionResetError, BlockingIOError):
                            d = b""
                        replies[s] += d
                        if not d or replies[s].endswith(b"\r\n"):
                            sel.unregister(s)
                            pending.discard(s)

            # The epoll module accepts and refuses at once with its spare descriptor. The
            # engine (uring builds) backs off instead and serves the waiting clients once
            # descriptors are free again, as memcached does.
            spare = not BIN.endswith("-uring")
            collect(10 if spare else 1)
            if spare:
                self.assertEqual(len(pending), 0, "%d of %d clients never answered while the "
                                 "server was out of descriptors" % (len(pending), len(clients)))
            # idle while out of fds, with the served clients still open: no spinning
            t0, c0 = time.time(), cpu_seconds(pid)
            time.sleep(1.0)
            used = cpu_seconds(pid) - c0
            self.assertLess(used, 0.5 * (time.time() - t0), "server busy while out of fds")
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (hard, hard))
            collect(10)
            sel.close()
            self.assertEqual(len(pending), 0, "%d of %d clients never answered after "
                             "descriptors were free again" % (len(pending), len(clients)))
            served = sum(1 for r in replies.values() if r.startswith(b"VERSION "))
            refused = sum(1 for r in replies.values()
                          if r == b"ERROR Too many open connections\r\n")
            self.assertEqual(served + refused, len(clients), set(replies.values()))
            if spare:
                self.assertGreater(refused, 0)
            for s in clients:
                s.close()
            clients = []
            time.sleep(0.2)
            c = Conn(srv.port)
            self.assertEqual(c.cmd(b"version\r\n")[:8], b"VERSION ")
            c.close()
        finally:
            for s in clients:
                s.close()
            self.assertEqual(srv.stop(), 0)

    def test_refuses_to_start_when_fd_limit_is_below_connection_limit(self):
        # Like memcached, the server raises the descriptor limit to what -c needs, and when
        # it cannot, exits with a message instead of running out of descriptors later.
        def low_limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

        p = subprocess.run([BIN, "-U", "0", "-p", "0", "-t", "2", "-c", "1024"],
                           preexec_fn=low_limit, capture_output=True, timeout=10)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"-c 1024", p.stderr)
        self.assertIn(b"RLIMIT_NOFILE", p.stderr)
        # a -c the limit covers starts (and stops cleanly)
        p = subprocess.Popen([BIN, "-U", "0", "-p", "0", "-t", "2", "-c", "20"],
                             preexec_fn=low_limit, stderr=subprocess.DEVNULL)
        try:
            self.assertRaises(subprocess.TimeoutExpired, p.wait, 0.5)
        finally:
            p.terminate()
            self.assertEqual(p.wait(5), 0)


def cpu_seconds(pid):
    """User plus system CPU time of a process, from /proc (clock ticks of 1/100 s)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    unittest.main()
