"""knoway-dataplane under systemd's protocols, without systemd running: sd_notify messages
read from our own NOTIFY_SOCKET, and socket activation through systemd-socket-activate."""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import DATAPLANE, Dataplane, Mock, backend, free_port, post, route  # noqa: E402

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class Notify(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="kwsd-")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.path = os.path.join(self.dir, "notify")
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.got = []

    def tearDown(self):
        self.sock.close()

    def drain(self):
        """What is queued now, without waiting (a timeout socket would wait)."""
        self.sock.setblocking(False)
        try:
            while True:
                self.got.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(0.2)

    def wait_for(self, text, timeout=5.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for m in self.got:
                if text in m:
                    return m
            try:
                self.got.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass
        self.fail("no %r in %r" % (text, self.got))

    def test_ready_reload_watchdog_stopping(self):
        mock = Mock()
        dp = Dataplane(backend("m", mock.url()) + route("r", ["m"], ["m"]),
                       env={"NOTIFY_SOCKET": self.path, "WATCHDOG_USEC": "200000"})
        try:
            ready = self.wait_for("READY=1")
            self.assertIn("STATUS=serving configuration sha256:", ready)
            self.assertIn("MAINPID=%d" % dp.proc.pid, ready)
            self.assertEqual(post(dp.port, "/v1/chat/completions", CHAT)[0], 200)
            # the watchdog is fed every 100 ms while the workers answer
            self.got.clear()
            time.sleep(0.5)
            self.drain()
            n = sum(1 for m in self.got if m == "WATCHDOG=1")
            self.assertGreaterEqual(n, 3)
            self.got.clear()
            dp.hup()
            self.wait_for("RELOADING=1")
            self.wait_for("READY=1")
            self.got.clear()
            dp.proc.send_signal(signal.SIGTERM)
            self.wait_for("STOPPING=1")
            self.assertEqual(dp.proc.wait(10), 0)
        finally:
            dp.stop()
            mock.stop()


class SocketActivation(unittest.TestCase):
    def test_systemd_socket_activate(self):
        mock = Mock()
        port = free_port()
        # the file names other ports: the activated socket wins
        dp = Dataplane(backend("m", mock.url()) + route("r", ["m"], ["m"]), wait=False)
        dp.proc.kill()
        dp.proc.wait()
        act = subprocess.Popen(["systemd-socket-activate", "-l", "127.0.0.1:%d" % port, "--fdname=api",
                                DATAPLANE, "-c", dp.path], stdout=dp.log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 5
            while True:
                try:
                    s, _, body = post(port, "/v1/chat/completions", CHAT)
                    break
                except OSError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.05)
            self.assertEqual(s, 200, body)
            self.assertIn('"listen":"socket activation"', dp.logs())
        finally:
            act.send_signal(signal.SIGTERM)
            self.assertEqual(act.wait(10), 0)
            dp.log.close()
            mock.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
