# SPDX-License-Identifier: MIT
"""TLS listeners (CONFIG.md listen[].tls {cert, key}): with a self-signed certificate made by
the openssl CLI, HTTPS publish answers 202, a WSS subscriber receives the event, plain HTTP on
the TLS port is never served, ALPN never lands on h2, and a missing certificate file stops the
daemon with a non-zero status and a message that names the file. SIGHUP rotates the
certificate for new handshakes while open WSS connections stay, and a broken replacement
changes nothing.
"""

import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

import websockets

from herald_testlib import (Daemon, DaemonError, HeraldTestCase, WS_SUBPROTOCOL, WSClient,
                            _open_clients, async_test, publish_path)

START_TIMEOUT = 10.0


def make_cert(directory, name="", newkey=("rsa:2048",)):
    """Self-signed certificate for localhost/127.0.0.1; returns (cert path, key path)."""
    cert = os.path.join(directory, f"cert{name}.pem")
    key = os.path.join(directory, f"key{name}.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", *newkey, "-nodes",
                    "-subj", f"/CN=localhost{name}",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-days", "1", "-keyout", key, "-out", cert],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=30)
    return cert, key


def tls_config(cert, key):
    return {"listen": [{"address": "127.0.0.1", "port": 0,
                        "tls": {"cert": cert, "key": key}}]}


class TlsTest(HeraldTestCase):
    @classmethod
    def setUpClass(cls):
        if shutil.which("openssl") is None:
            raise unittest.SkipTest("openssl CLI not installed")
        cls.tmp = tempfile.mkdtemp(prefix="herald-tls-")
        cls.cert, cls.key = make_cert(cls.tmp)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def start_tls(self):
        # listen=False: --listen would replace the file's (TLS) listener with a plain one.
        d = self.start_daemon(tls_config(self.cert, self.key), listen=False,
                              start_timeout=START_TIMEOUT)
        m = d.wait_for_log(r'msg="listening".*\bport=(\d+)', timeout=START_TIMEOUT)
        if m is None:
            self.fail(f"heraldd with a TLS listener did not log a listening line:\n"
                      f"{d.log_tail()}")
        self.assertRegex(m.string, r"\btls=yes\b", "listening line does not say tls=yes")
        return d

    def ctx(self, alpn=None):
        c = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.cert)
        if alpn:
            c.set_alpn_protocols(alpn)
        return c

    def https(self, d, alpn=None):
        return http.client.HTTPSConnection("127.0.0.1", d.port, timeout=5,
                                           context=self.ctx(alpn))

    def test_https_publish_202_and_alpn_http11(self):
        d = self.start_tls()
        conn = self.https(d, alpn=["h2", "http/1.1"])
        try:
            body = json.dumps({"n": 1}).encode()
            conn.request("POST", publish_path("tls.http"), body=body,
                         headers={"Content-Type": "application/json"})
            # The handshake is done now: check what ALPN settled on.
            proto = conn.sock.selected_alpn_protocol()
            self.assertIn(proto, (None, "http/1.1"),
                          f"server negotiated {proto!r} although only HTTP/1.1 is served")
            self.assertEqual(conn.sock.version()[:3], "TLS")
            resp = conn.getresponse()
            data = resp.read()
            self.assertEqual(resp.status, 202, data[:300])
            self.assertEqual(resp.version, 11, "response is not HTTP/1.1")
            reply = json.loads(data)
            self.assertIn("id", reply, reply)
            # Keep-alive over TLS: a second request on the same connection is served too.
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            resp.read()
            self.assertEqual(resp.status, 200)
        finally:
            conn.close()
        # The event went where a plain-HTTP publish would go.
        conn = self.https(d)
        try:
            conn.request("GET", "/v1/topics/tls.http/events?since=all")
            resp = conn.getresponse()
            page = json.loads(resp.read())
            self.assertEqual(resp.status, 200)
            self.assertEqual([e["data"] for e in page["events"]], [{"n": 1}])
        finally:
            conn.close()

    def test_untrusted_client_refuses_self_signed(self):
        # Proves the tests above really check the certificate: a default context must fail.
        d = self.start_tls()
        conn = http.client.HTTPSConnection("127.0.0.1", d.port, timeout=5,
                                           context=ssl.create_default_context())
        try:
            with self.assertRaises(ssl.SSLCertVerificationError):
                conn.request("GET", "/healthz")
        finally:
            conn.close()
        # And the daemon survived the failed handshake.
        conn = self.https(d)
        try:
            conn.request("GET", "/healthz")
            self.assertEqual(conn.getresponse().status, 200)
        finally:
            conn.close()

    @async_test(timeout=30)
    async def test_wss_subscriber_receives_event(self):
        d = self.start_tls()
        url = f"wss://127.0.0.1:{d.port}/v1/ws"
        try:
            ws = await asyncio.wait_for(
                websockets.connect(url, ssl=self.ctx(), subprotocols=[WS_SUBPROTOCOL],
                                   ping_interval=None, open_timeout=5, close_timeout=2,
                                   compression=None),
                6)
        except asyncio.TimeoutError:
            self.fail("WSS connect timed out")
        c = WSClient(ws)
        _open_clients.add(c)
        self.assertEqual(ws.subprotocol, WS_SUBPROTOCOL)
        welcome = await c.recv_frame(5)
        self.assertEqual(welcome.get("type"), "welcome", welcome)
        await c.subscribe("tls.ws")
        # Publish over HTTPS from a thread so the event loop keeps reading the socket.

        def pub():
            conn = self.https(d)
            try:
                conn.request("POST", publish_path("tls.ws"), body=b'"over tls"',
                             headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                return r.status
            finally:
                conn.close()

        status = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, pub),
                                        10)
        self.assertEqual(status, 202)
        ev = await c.recv_event(5)
        self.assertEqual(ev["topic"], "tls.ws")
        self.assertEqual(ev["data"], "over tls")
        # Publishing over the WSS connection itself works as well.
        r = await c.publish("tls.ws", 7)
        self.assertEqual(r.get("type"), "ok", r)
        ev = await c.recv_event(5)
        self.assertEqual(ev["data"], 7)
        await c.close()

    def test_plain_http_on_tls_port_not_served(self):
        d = self.start_tls()
        s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        got = b""
        how = "timeout"
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and len(got) < 65536:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    chunk = s.recv(4096)
                except socket.timeout:
                    break
                except ConnectionResetError:
                    how = "reset"
                    break
                if not chunk:
                    how = "eof"
                    break
                got += chunk
        finally:
            s.close()
        self.assertFalse(got.startswith(b"HTTP/"), f"plain HTTP was served on the TLS port: "
                                                   f"{got[:200]!r}")
        self.assertNotIn(b"\"status\"", got, got[:200])
        # Closed, reset or a TLS alert record (content type 21), never left hanging.
        is_alert = len(got) >= 1 and got[0] == 0x15
        self.assertTrue(how in ("eof", "reset") or is_alert,
                        f"server neither closed nor sent a TLS alert within 5 s "
                        f"(how={how}, got={got[:50]!r})")
        # The daemon still serves TLS clients afterwards.
        conn = self.https(d)
        try:
            conn.request("GET", "/healthz")
            self.assertEqual(conn.getresponse().status, 200)
        finally:
            conn.close()

    def test_missing_cert_file_fails_start(self):
        missing = os.path.join(self.tmp, "does-not-exist-cert.pem")
        d = Daemon(tls_config(missing, self.key), listen=False)
        d.start()
        try:
            try:
                rc = d.wait(10)
            except DaemonError:
                self.fail(f"heraldd kept running with a missing certificate file:\n"
                          f"{d.log_tail()}")
            # Let the log drain threads catch the last lines.
            for t in d._threads:
                t.join(2)
            log = d.log
            self.assertNotEqual(rc, 0, f"exit status 0 with a missing cert file:\n{log}")
            self.assertIn(rc, (1, 2), f"exit status {rc} is not a CONFIG.md code:\n{log}")
            self.assertIn("does-not-exist-cert.pem", log,
                          f"no message names the missing file:\n{log}")
            self.assertNotRegex(log, r'msg="listening"', "daemon claimed to listen")
        finally:
            d.kill()


def served_cert(port):
    """The PEM certificate a TLS handshake on port presents (no verification)."""
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with c.wrap_socket(raw, server_hostname="localhost") as s:
            return ssl.DER_cert_to_PEM_cert(s.getpeercert(binary_form=True))


def same_pem(a, b):
    return "".join(a.split()) == "".join(b.split())


class TlsReloadTest(HeraldTestCase):
    def setUp(self):
        if shutil.which("openssl") is None:
            raise unittest.SkipTest("openssl CLI not installed")
        self.tmp = tempfile.mkdtemp(prefix="herald-tlsreload-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.cert_a, self.key_a = make_cert(self.tmp, "a")
        # The replacement uses another key type too: the swap must carry the key with it.
        self.cert_b, self.key_b = make_cert(self.tmp, "b",
                                              ("ec", "-pkeyopt", "ec_paramgen_curve:P-256"))
        self.cert = os.path.join(self.tmp, "live-cert.pem")
        self.key = os.path.join(self.tmp, "live-key.pem")
        shutil.copy(self.cert_a, self.cert)
        shutil.copy(self.key_a, self.key)

    def read(self, path):
        with open(path) as f:
            return f.read()

    def reload(self, d, expect):
        mark = d.log_mark()
        d.send_signal(signal.SIGHUP)
        m = d.wait_for_log(expect, start=mark, timeout=10)
        self.assertIsNotNone(m, f"no {expect!r} after SIGHUP:\n{d.log_tail()}")

    @async_test(timeout=60)
    async def test_sighup_rotates_certificate_and_keeps_connections(self):
        d = self.start_daemon(tls_config(self.cert, self.key), listen=False,
                              start_timeout=START_TIMEOUT)
        self.assertIsNotNone(d.wait_for_log(r'msg="listening".*\bport=(\d+)'))
        loop = asyncio.get_running_loop()
        first = await loop.run_in_executor(None, served_cert, d.port)
        self.assertTrue(same_pem(first, self.read(self.cert_a)))

        ctx = ssl.create_default_context(cafile=self.cert_a)
        ws = await websockets.connect(f"wss://127.0.0.1:{d.port}/v1/ws", ssl=ctx,
                                      subprotocols=[WS_SUBPROTOCOL], ping_interval=None,
                                      open_timeout=5, close_timeout=2, compression=None)
        c = WSClient(ws)
        _open_clients.add(c)
        self.assertEqual((await c.recv_frame(5)).get("type"), "welcome")
        await c.subscribe("rot.a")

        shutil.copy(self.cert_b, self.cert)
        shutil.copy(self.key_b, self.key)
        self.reload(d, r'msg="TLS certificate loaded" listener=0 not_after=\d{4}-')
        self.assertIsNotNone(d.wait_for_log("configuration reloaded"))
        second = await loop.run_in_executor(None, served_cert, d.port)
        self.assertTrue(same_pem(second, self.read(self.cert_b)),
                        "new handshakes still get the old certificate")
        # A client trusting only the new certificate completes a real exchange.
        ctx_b = ssl.create_default_context(cafile=self.cert_b)

        def publish_b():
            conn = http.client.HTTPSConnection("127.0.0.1", d.port, timeout=5, context=ctx_b)
            try:
                conn.request("POST", publish_path("rot.a"), body=b"after rotation")
                r = conn.getresponse()
                r.read()
                return r.status
            finally:
                conn.close()

        self.assertEqual(await loop.run_in_executor(None, publish_b), 202)
        # The WSS connection opened under the old certificate is still live.
        ev = await c.recv_event(5)
        self.assertEqual(ev["data"], "after rotation")

        # A key that does not match its certificate: the reload is refused, nothing changes.
        shutil.copy(self.key_a, self.key)
        self.reload(d, r'configuration not reloaded.*does not belong to the certificate')
        third = await loop.run_in_executor(None, served_cert, d.port)
        self.assertTrue(same_pem(third, self.read(self.cert_b)))
        # So is a file that is not PEM at all.
        with open(self.cert, "w") as f:
            f.write("not a certificate\n")
        self.reload(d, r'configuration not reloaded.*no PEM certificate')
        self.assertTrue(same_pem(await loop.run_in_executor(None, served_cert, d.port),
                                 self.read(self.cert_b)))
        await c.ping()
        await c.close()

    def test_unusable_certificate_fails_start(self):
        with open(self.cert, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnonsense\n-----END CERTIFICATE-----\n")
        d = Daemon(tls_config(self.cert, self.key), listen=False)
        d.start()
        try:
            rc = d.wait(10)
            for t in d._threads:
                t.join(2)
            self.assertEqual(rc, 1, d.log)
            self.assertRegex(d.log, r"listen\[0\]\.tls: no PEM certificate in .*live-cert\.pem")
        finally:
            d.kill()


if __name__ == "__main__":
    unittest.main()
