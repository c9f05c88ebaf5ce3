"""mcserver over TLS with memcached's flags (-Z -o ssl_chain_cert=,ssl_key=,ssl_ca_cert=,
ssl_verify_mode=), driven by pymemcache's TLS client. The *-uring builds serve TLS through the
p99 engine; the *-epoll builds refuse -Z with a message that says where TLS comes from.
memcached -Z, when installed, runs the same client checks as the reference. Certificates are
made at run time with the openssl command-line tool.

usage: MCSERVER_BIN=build/bin/mcserver-p99-uring python3 test_tls.py
"""
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import unittest

from pymemcache.client.base import Client

import mcutil

BIN = os.environ.get("MCSERVER_BIN", "")


def openssl(cwd, *args):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def make_certs(d):
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(d, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=mcserver test CA")
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "extendedKeyUsage=serverAuth\n")
    with open(os.path.join(d, "client.ext"), "w") as f:
        f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        openssl(d, "req", *ec, "-keyout", who + ".key", "-out", who + ".csr", "-subj", "/CN=" + who)
        openssl(d, "x509", "-req", "-in", who + ".csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", who + ".crt", "-days", "2", "-extfile", who + ".ext")


class TlsCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="mcserver-tls-")
        make_certs(cls.dir)
        # memcached drops to user nobody before it reads them (test-only keys).
        os.chmod(cls.dir, 0o755)
        for f in os.listdir(cls.dir):
            os.chmod(os.path.join(cls.dir, f), 0o644)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def tls_flags(self, *extra):
        opts = "ssl_chain_cert=%s,ssl_key=%s" % (self.path("server.crt"), self.path("server.key"))
        for e in extra:
            opts += "," + e
        return ["-Z", "-o", opts]

    def context(self, with_cert=False, version=None):
        ctx = ssl.create_default_context(cafile=self.path("ca.crt"))
        if with_cert:
            ctx.load_cert_chain(self.path("client.crt"), self.path("client.key"))
        if version:
            ctx.minimum_version = ctx.maximum_version = version
        return ctx

    def client(self, port, ctx):
        return Client(("127.0.0.1", port), tls_context=ctx, connect_timeout=5, timeout=5)

    def exercise(self, port):
        """set/get/delete, a multi-get, a 600 KB value, on TLS 1.2 and 1.3."""
        for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            c = self.client(port, self.context(version=v))
            self.assertTrue(c.set(b"k1", b"v1"))
            self.assertEqual(c.get(b"k1"), b"v1")
            big = bytes(range(256)) * 2400
            self.assertTrue(c.set(b"big", big))
            self.assertEqual(c.get(b"big"), big)
            c.set_many({b"a%d" % i: b"x%d" % i for i in range(100)})
            got = c.get_many([b"a%d" % i for i in range(100)])
            self.assertEqual(len(got), 100)
            self.assertEqual(got[b"a42"], b"x42")
            self.assertTrue(c.delete(b"k1"))
            self.assertIsNone(c.get(b"k1"))
            c.close()

    def plaintext_is_refused(self, port):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"version\r\n")
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        s.close()
        self.assertNotIn(b"VERSION", data, "a plaintext command was answered on the TLS port")

    def test_binary(self):
        if not BIN:
            self.skipTest("MCSERVER_BIN not set")
        name = os.path.basename(BIN)
        if name.endswith("-epoll"):
            r = subprocess.run([BIN, "-U", "0", "-p", "0"] + self.tls_flags(), capture_output=True,
                               text=True, timeout=10)
            self.assertNotEqual(r.returncode, 0, "%s accepted -Z" % name)
            self.assertIn("p99 I/O module", r.stderr)
            return
        srv = mcutil.start_mcserver(BIN, *self.tls_flags())
        try:
            self.exercise(srv.port)
            self.plaintext_is_refused(srv.port)
            self.exercise(srv.port)  # still serving after the bad client
            self.assertTrue(srv.alive())
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_client_certificate_required(self):
        if not BIN or os.path.basename(BIN).endswith("-epoll"):
            self.skipTest("TLS needs an mcserver-*-uring build")
        srv = mcutil.start_mcserver(BIN, *self.tls_flags("ssl_ca_cert=" + self.path("ca.crt"),
                                                         "ssl_verify_mode=2"))
        try:
            c = self.client(srv.port, self.context(with_cert=True))
            self.assertTrue(c.set(b"k", b"v"))
            self.assertEqual(c.get(b"k"), b"v")
            c.close()
            bare = self.client(srv.port, self.context())
            with self.assertRaises((ssl.SSLError, OSError, ConnectionError)):
                bare.set(b"k", b"v")
                bare.get(b"k")
            bare.close()
            self.assertTrue(srv.alive())
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_bad_flags(self):
        if not BIN or os.path.basename(BIN).endswith("-epoll"):
            self.skipTest("TLS needs an mcserver-*-uring build")
        cases = [
            (["-Z"], "ssl_chain_cert"),
            (["-Z", "-o", "ssl_chain_cert=%s,ssl_key=%s" % (self.path("server.crt"), self.path("ca.key"))], "TLS"),
            (["-Z", "-o", "ssl_chain_cert=/nonexistent.pem,ssl_key=%s" % self.path("server.key")], "nonexistent"),
            (["-Z", "-o", "bogus_option=1"], "not supported"),
        ]
        for args, want in cases:
            r = subprocess.run([BIN, "-U", "0", "-p", "0"] + args, capture_output=True, text=True, timeout=10)
            self.assertNotEqual(r.returncode, 0, args)
            self.assertIn(want, r.stderr, args)

    def test_reference_memcached(self):
        """The same client checks against memcached -Z: the test's client setup is right."""
        if shutil.which("memcached") is None:
            self.skipTest("memcached not installed")
        srv = mcutil.start_memcached(*self.tls_flags())
        try:
            self.exercise(srv.port)
        finally:
            srv.stop()


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-q"])
