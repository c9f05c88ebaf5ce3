"""mcserver through a real meta-protocol client: meta-memcache (PyPI) driving set/get/delete/
touch, CAS, stale-while-revalidate, recache and miss leases, against MCSERVER_BIN and against
memcached itself as the reference (the same expectations must hold on both).

meta-memcache needs Python >= 3.10 and lives in build/meta-venv (`make meta-client-deps`);
run.sh runs this file with that interpreter. Without it every test skips, saying why.

Run: MCSERVER_BIN=build/bin/mcserver-slab-epoll build/meta-venv/bin/python test_meta_client.py
"""
import os
import sys
import unittest

from mcutil import Conn, start_mcserver, start_memcached

BIN = os.environ.get("MCSERVER_BIN", "build/bin/mcserver-slab-epoll")
VENV_LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "build",
                        "meta-venv.log")

try:
    from meta_memcache import (CacheClient, ConnectionPool, LeasePolicy, RecachePolicy,
                               ServerAddress, StalePolicy, socket_factory_builder)
    SKIP = None
except ImportError as e:  # not installed: say where the install's reason is
    SKIP = "meta-memcache not importable by %s (%s); run `make meta-client-deps`" % (
        sys.executable, e)
    try:
        with open(VENV_LOG) as f:
            last = [ln.strip() for ln in f if ln.strip()][-1:]
        SKIP += "; its install said: %s (%s)" % (last[0] if last else "nothing",
                                                  os.path.normpath(VENV_LOG))
    except OSError:
        pass


@unittest.skipIf(SKIP, SKIP)
class MetaClient:
    """The expectations; subclasses say which server."""

    def start(self):
        raise NotImplementedError

    def setUp(self):
        self.srv = self.start()
        self.sockets = []  # the client has no close(): its sockets are closed here
        self.pools = []

        def pool_for(addr):
            make = socket_factory_builder(host=addr.host, port=addr.port, connection_timeout=5,
                                          recv_timeout=5, no_delay=True)

            def connect():
                sock = make()
                self.sockets.append(sock)
                return sock

            pool = ConnectionPool(server=str(addr), socket_factory_fn=connect,
                                  initial_pool_size=1, max_pool_size=3,
                                  mark_down_period_s=1, read_buffer_size=4096)
            self.pools.append(pool)
            return pool

        self.client = CacheClient.cache_client_from_servers(
            servers=[ServerAddress(host="127.0.0.1", port=self.srv.port)],
            connection_pool_factory_fn=pool_for)
        self.raw = Conn(self.srv.port)

    def tearDown(self):
        self.raw.close()
        for pool in self.pools:  # no reply the client could not parse, no dropped socket
            self.assertEqual(pool.get_counters().total_errors, 0)
        for sock in self.sockets:
            sock.close()
        rc = self.srv.stop()
        self.assertEqual(rc, 0, "%s did not exit cleanly" % self.srv.name)

    def ttl(self, key):
        """The remaining TTL the server reports for key (raw `mg <key> t`)."""
        ln = self.raw.cmd(b"mg " + key.encode() + b" t\r\n")
        self.assertTrue(ln.startswith(b"HD t"), ln)
        return int(ln.split()[1][1:])

    def test_set_get_delete(self):
        c = self.client
        values = {"str": "hello", "bytes": b"\x00\xff\r\nEND\r\n", "int": 42,
                  "dict": {"a": [1, 2, 3]}, "big": b"x" * 300000, "empty": b""}
        for k, v in values.items():
            self.assertTrue(c.set(k, v, ttl=60), k)
        for k, v in values.items():
            self.assertEqual(c.get(k), v, k)
        got = c.multi_get(list(values))
        self.assertEqual({k.key: v for k, v in got.items()}, values)
        self.assertIsNone(c.get("absent"))
        self.assertTrue(c.delete("str"))
        self.assertFalse(c.delete("str"))
        self.assertIsNone(c.get("str"))
        self.assertTrue(c.invalidate("str"))  # already gone counts as invalidated
        self.assertTrue(c.set("k", "v1", ttl=60, no_reply=True))
        self.assertEqual(c.get("k"), "v1")
        self.assertFalse(c.refill("k", "v2", ttl=60))  # add mode: present, not stored
        self.assertEqual(c.get("k"), "v1")

    def test_touch(self):
        c = self.client
        self.assertTrue(c.set("t", "v", ttl=100))
        self.assertTrue(c.touch("t", ttl=5000))
        self.assertGreater(self.ttl("t"), 100)
        self.assertFalse(c.touch("no-such", ttl=10))
        self.assertEqual(c.get("t", touch_ttl=50), "v")  # get-and-touch
        self.assertLessEqual(self.ttl("t"), 50)

    def test_cas(self):
        c = self.client
        cas = c.set_cas("c", "one", ttl=60)
        self.assertIsNotNone(cas)
        value, cas2 = c.get_cas("c")
        self.assertEqual((value, cas2), ("one", cas))
        self.assertTrue(c.set("c", "two", ttl=60, cas_token=cas))
        self.assertFalse(c.set("c", "three", ttl=60, cas_token=cas))  # stale token
        self.assertEqual(c.get("c"), "two")
        _, cas3 = c.get_cas("c")
        self.assertFalse(c.delete("c", cas_token=cas))
        self.assertTrue(c.delete("c", cas_token=cas3))
        self.assertIsNone(c.get("c"))

    def test_stale_while_revalidate(self):
        c = self.client
        self.assertTrue(c.set("s", "old", ttl=60))
        # delete marks the item stale instead of removing it
        self.assertTrue(c.delete("s", stale_policy=StalePolicy(mark_stale_on_deletion_ttl=30)))
        self.assertIsNone(c.get("s"))  # first reader wins the recache: a miss for it
        self.assertEqual(c.get("s"), "old")  # the others are served the stale value
        self.assertEqual(c.get("s"), "old")
        self.assertTrue(c.set("s", "new", ttl=60))  # the winner's refill
        self.assertEqual(c.get("s"), "new")
        self.assertEqual(c.get("s"), "new")

    def test_recache(self):
        c = self.client
        self.assertTrue(c.set("r", "v", ttl=20))
        policy = RecachePolicy(ttl=30)  # remaining TTL below 30 s: one client recaches
        self.assertIsNone(c.get("r", recache_policy=policy))
        self.assertEqual(c.get("r", recache_policy=policy), "v")
        self.assertTrue(c.set("r", "v2", ttl=600))
        self.assertEqual(c.get("r", recache_policy=policy), "v2")

    def test_miss_lease(self):
        c = self.client
        policy = LeasePolicy(ttl=30, miss_retries=3, miss_retry_wait=0.001)
        waits = []
        # the first reader of a missing key wins the lease: a miss, no waiting
        self.assertIsNone(c.get_or_lease("l", policy, lease_wait_fn=waits.append))
        self.assertEqual(waits, [])
        # another reader loses: it retries (waits) and, the value never coming, misses
        self.assertIsNone(c.get_or_lease("l", policy, lease_wait_fn=waits.append))
        self.assertEqual(len(waits), policy.miss_retries - 1)
        self.assertTrue(c.set("l", {"filled": True}, ttl=60))  # the winner fills it
        waits.clear()
        self.assertEqual(c.get_or_lease("l", policy, lease_wait_fn=waits.append),
                         {"filled": True})
        self.assertEqual(waits, [])


class Mcserver(MetaClient, unittest.TestCase):
    def start(self):
        return start_mcserver(BIN, "-t", "2", "-m", "64")


class Memcached(MetaClient, unittest.TestCase):
    def start(self):
        return start_memcached("-t", "2", "-m", "64")


if __name__ == "__main__":
    unittest.main()
