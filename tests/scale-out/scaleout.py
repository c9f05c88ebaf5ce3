"""Processes for the scale-out tests: mcserver backends on fixed ports (so one can be killed and
restarted where the proxy expects it) and a nutcracker (twemproxy) in front of them.

Every process is started with PR_SET_PDEATHSIG, so it dies with the test even when the test
itself is killed; stop_all() ends them in the normal and the failing case.
"""
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "mcserver"))
from mcutil import Conn, free_port  # noqa: E402

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_started = []


def _die_with_parent():
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _spawn(argv, log_path=None):
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                preexec_fn=_die_with_parent)
    finally:
        if log_path:
            out.close()
    _started.append(proc)
    return proc


def _accepting(port, proc, deadline):
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


def stop_all():
    """Kills every process this module started that is still running, and reaps it."""
    for proc in _started:
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    _started.clear()


class Backend:
    """One mcserver on a port of its own; kill() and restart() keep the port."""

    def __init__(self, binary, log_dir):
        self.binary = binary
        self.name = os.path.basename(binary)
        self.log = os.path.join(log_dir, self.name + ".log")
        self.proc = None
        for _ in range(20):
            self.port = free_port()
            if self._start():
                return
        raise RuntimeError("%s did not start (log: %s)" % (self.name, self.log))

    def _start(self):
        self.proc = _spawn([self.binary, "-U", "0", "-l", "127.0.0.1", "-p", str(self.port),
                            "-t", "1", "-m", "64"], self.log)
        if _accepting(self.port, self.proc, time.monotonic() + 5):
            return True
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        return False

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def kill(self):
        """SIGKILL, as a crash or the OOM killer would; returns once the process is gone."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def restart(self):
        """Starts the same binary on the same port again (empty, as after a crash)."""
        deadline = time.monotonic() + 10
        while not self._start():
            if time.monotonic() > deadline:
                raise RuntimeError("%s did not restart on port %d (log: %s)"
                                   % (self.name, self.port, self.log))
            time.sleep(0.1)

    def conn(self):
        return Conn(self.port)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


class Proxy:
    """nutcracker with one pool over the backends: ketama over murmur, auto-eject.

    Not fnv1a_64, twemproxy's example hash: under ketama it sends keys that differ only in a
    counter suffix mostly to one server (240 such keys over three servers: 0/190/50)."""

    POOL = "scaleout"

    def __init__(self, backends, log_dir, retry_timeout_ms, failure_limit, timeout_ms=2000):
        self.retry_timeout_ms = retry_timeout_ms
        self.failure_limit = failure_limit
        self.conf = os.path.join(log_dir, "nutcracker.yml")
        self.log = os.path.join(log_dir, "nutcracker.log")
        for _ in range(20):
            self.port, self.stats_port = free_port(), free_port()
            with open(self.conf, "w") as f:
                f.write(self.config_text(backends, self.port, retry_timeout_ms, failure_limit,
                                         timeout_ms))
            self.proc = _spawn(["nutcracker", "-c", self.conf, "-s", str(self.stats_port),
                                "-a", "127.0.0.1", "-i", "100", "-o", self.log,
                                "-p", os.path.join(log_dir, "nutcracker.pid")])
            if (_accepting(self.port, self.proc, time.monotonic() + 5)
                    and _accepting(self.stats_port, self.proc, time.monotonic() + 2)):
                return
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
        raise RuntimeError("nutcracker did not start (log: %s)" % self.log)

    @classmethod
    def config_text(cls, backends, port, retry_timeout_ms, failure_limit, timeout_ms):
        servers = "".join("    - %s:1 %s\n" % (b.addr, b.name) for b in backends)
        return ("%s:\n"
                "  listen: 127.0.0.1:%d\n"
                "  hash: murmur\n"
                "  distribution: ketama\n"
                "  timeout: %d\n"
                "  auto_eject_hosts: true\n"
                "  server_retry_timeout: %d\n"
                "  server_failure_limit: %d\n"
                "  servers:\n%s") % (cls.POOL, port, timeout_ms, retry_timeout_ms,
                                     failure_limit, servers)

    def conn(self):
        return Conn(self.port)

    def stats(self):
        """The pool's counters (nutcracker aggregates them every 100 ms here)."""
        with socket.create_connection(("127.0.0.1", self.stats_port), timeout=5) as s:
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data)[self.POOL]

    def alive(self):
        return self.proc.poll() is None
