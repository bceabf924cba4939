# SPDX-License-Identifier: MIT
"""Authentication and authorization of heraldd (PROTOCOL.md section 8): static tokens and HS256
JWTs on every transport, 401 versus 403, no fallback to anonymous for bad credentials, refused
commands that change nothing, JWT expiry and SIGHUP reloads closing live WebSockets with 1008,
and the refusal to listen beyond loopback without an auth section.
"""

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.parse

import websockets

from herald_testlib import (ClosedError, Daemon, HeraldTestCase, WSClient, WSInvalidStatus,
                            async_test, heraldd_path, publish_path, topic_path,
                            ws_refused_status)

SECRET = "it-jwt-secret-" + os.urandom(8).hex()
TOKENS = {name: "tok-" + name + "-" + os.urandom(12).hex()
          for name in ("pub", "reader", "ops", "narrow")}
WRONG = "tok-wrong-" + os.urandom(12).hex()


def sha(t):
    return hashlib.sha256(t.encode()).hexdigest()


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def make_jwt(claims, secret=SECRET, alg="HS256", header=None):
    """Signs claims with HS256 (or leaves the signature empty for alg none)."""
    head = header if header is not None else {"alg": alg, "typ": "JWT"}
    signing = (b64url(json.dumps(head, separators=(",", ":")).encode()) + "." +
               b64url(json.dumps(claims, separators=(",", ":")).encode()))
    if alg == "none":
        return signing + "."
    sig = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64url(sig)


def user_jwt(sub, exp_in=60, **extra):
    now = int(time.time())
    claims = {"sub": sub, "exp": now + exp_in,
              "herald": {"pub": ["user.{sub}.>"], "sub": ["user.{sub}.>"]}}
    claims.update(extra)
    return make_jwt(claims)


def bearer(t):
    return {"Authorization": "Bearer " + t}


def auth_config(secret_path, tokens=("pub", "reader", "ops", "narrow"), narrow_news=True):
    rights = {
        "pub": (["news.>"], []),
        "reader": ([], ["news.>", "public.>"]),
        "ops": ([], ["news.>"]),
        "narrow": ([], (["news.>"] if narrow_news else []) + ["public.>"]),
    }
    return {"auth": {
        "anonymous": {"publish": ["public.>"], "subscribe": ["public.>"]},
        "tokens": [{"name": n, "sha256": sha(TOKENS[n]), "publish": rights[n][0],
                    "subscribe": rights[n][1]} for n in tokens],
        "jwt": {"secret_file": secret_path},
    }}


class AuthTest(HeraldTestCase):
    def setUp(self):
        fd, self.secret_path = tempfile.mkstemp(prefix="herald-it-jwt-")
        with os.fdopen(fd, "w") as f:
            f.write(SECRET + "\n\n")  # trailing whitespace must be ignored
        self.addCleanup(os.unlink, self.secret_path)
        self.d = self.start_daemon(auth_config(self.secret_path))

    # -- helpers -------------------------------------------------------------------------

    def post(self, topic, body="x", headers=None, query=None):
        return self.d.request("POST", publish_path(topic, query=query), body.encode(), headers)

    def poll(self, pattern, headers=None, query=None):
        q = {"since": "all"}
        q.update(query or {})
        return self.d.get(topic_path(pattern) + "/events?" + urllib.parse.urlencode(q), headers)

    def stored(self, pattern):
        """Topics and data of everything retained under pattern, read as the reader token."""
        r = self.poll(pattern, bearer(TOKENS["reader"]))
        self.assertEqual(r.status, 200, r)
        return [(e["topic"], e["data"]) for e in r.json["events"]]

    def assertDenied(self, r, status):
        code = {401: "unauthorized", 403: "forbidden"}[status]
        self.assertEqual(r.status, status, r)
        self.assertErrorBody(r.json, code)

    def raw_upgrade(self, path="/v1/ws", headers=None):
        """Sends a WebSocket upgrade over a plain socket; returns (status line, head, body)."""
        lines = ["GET " + path + " HTTP/1.1", f"Host: 127.0.0.1:{self.d.port}",
                 "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode(),
                 "Sec-WebSocket-Version: 13", "Sec-WebSocket-Protocol: herald.v1"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        with socket.create_connection(("127.0.0.1", self.d.port), timeout=5) as s:
            s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            buf = b""
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                buf += chunk
                head, sep, body = buf.partition(b"\r\n\r\n")
                if sep and b" 101 " in head.split(b"\r\n", 1)[0] + b" ":
                    break  # accepted: frames follow, the socket stays open
                m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if sep and m and len(body) >= int(m.group(1)):
                    break
        head, _, body = buf.partition(b"\r\n\r\n")
        return head.split(b"\r\n", 1)[0].decode("latin-1"), head, body

    def upgrade_status(self, path="/v1/ws", headers=None):
        status_line, _, _ = self.raw_upgrade(path, headers)
        parts = status_line.split()
        self.assertGreaterEqual(len(parts), 2, f"no status line: {status_line!r}")
        return int(parts[1])

    # -- HTTP publish --------------------------------------------------------------------

    def test_http_publish_rights(self):
        self.assertDenied(self.post("news.a", "anon"), 401)
        self.assertDenied(self.post("news.a", "reader", bearer(TOKENS["reader"])), 403)
        self.assertDenied(self.post("news.a", "wrong", bearer(WRONG)), 401)
        # Wrong credentials never fall back to anonymous, even where anonymous may publish.
        self.assertDenied(self.post("public.a", "wrong", bearer(WRONG)), 401)
        self.assertDenied(self.post("public.a", "wrongq", query={"token": WRONG}), 401)
        self.assertDenied(self.post("news.a", "pub", {"Authorization": "Basic Zm9vOmJhcg=="}),
                          401)
        self.assertEqual(self.post("public.a", "anon-ok").status, 202)
        self.assertEqual(self.post("news.a", "pub-ok", bearer(TOKENS["pub"])).status, 202)
        self.assertEqual(self.post("news.a", "query-ok", query={"token": TOKENS["pub"]}).status,
                         202)
        # The header wins over ?token= in both directions.
        self.assertDenied(self.post("news.a", "hdr-wrong", bearer(WRONG),
                                    {"token": TOKENS["pub"]}), 401)
        self.assertDenied(self.post("news.a", "hdr-reader", bearer(TOKENS["reader"]),
                                    {"token": TOKENS["pub"]}), 403)
        self.assertEqual(self.post("news.a", "hdr-ok", bearer(TOKENS["pub"]),
                                   {"token": WRONG}).status, 202)
        # Refused requests changed nothing.
        self.assertEqual(self.stored("news.>"),
                         [("news.a", "pub-ok"), ("news.a", "query-ok"), ("news.a", "hdr-ok")])
        self.assertEqual(self.stored("public.>"), [("public.a", "anon-ok")])

    # -- WebSocket -----------------------------------------------------------------------

    def test_ws_upgrade_bad_credentials(self):
        self.assertEqual(self.upgrade_status(headers=bearer(WRONG)), 401)
        self.assertEqual(self.upgrade_status("/v1/ws?token=" + WRONG), 401)
        # Header wins over the query on the upgrade too.
        self.assertEqual(self.upgrade_status("/v1/ws?token=" + TOKENS["reader"], bearer(WRONG)),
                         401)
        expired = make_jwt({"sub": "alice", "exp": int(time.time()) - 60,
                            "herald": {"pub": [], "sub": ["user.{sub}.>"]}})
        self.assertEqual(self.upgrade_status(headers=bearer(expired)), 401)
        # Good credentials by header and by query are accepted; no credentials is anonymous.
        self.assertEqual(self.upgrade_status(headers=bearer(TOKENS["reader"])), 101)
        self.assertEqual(self.upgrade_status("/v1/ws?token=" + TOKENS["reader"]), 101)
        self.assertEqual(self.upgrade_status(), 101)

    def test_ws_upgrade_refusal_is_http11_json_error(self):
        # PROTOCOL.md: every error body, on every transport, is the JSON error object; and a
        # 1.1 request gets a 1.1 status line (WebSocket clients such as python-websockets
        # reject an HTTP/1.0 answer and never see the 401).
        status_line, head, body = self.raw_upgrade(headers=bearer(WRONG))
        self.assertTrue(status_line.startswith("HTTP/1.1 401"), status_line)
        self.assertErrorBody(json.loads(body or b"null"), "unauthorized")

    @async_test(30)
    async def test_ws_upgrade_refused_for_ws_client(self):
        for kw in ({"headers": bearer(WRONG)}, {"url": self.d.ws_url + "?token=" + WRONG}):
            with self.subTest(**{k: str(v) for k, v in kw.items()}):
                try:
                    c = await WSClient.connect(kw.get("url", self.d), headers=kw.get("headers"))
                except WSInvalidStatus as e:
                    self.assertEqual(ws_refused_status(e), 401)
                except websockets.exceptions.InvalidMessage as e:
                    self.fail(f"client could not read the refusal as HTTP: {e!r}")
                else:
                    await c.close()
                    self.fail("upgrade with a wrong token was accepted")
        c = await WSClient.connect(self.d, headers=bearer(TOKENS["reader"]))
        await c.subscribe("news.>")

    @async_test(30)
    async def test_ws_commands_denied(self):
        watcher = await WSClient.connect(self.d, headers=bearer(TOKENS["reader"]))
        await watcher.subscribe("news.>")
        anon = await WSClient.connect(self.d)
        reader = await WSClient.connect(self.d, headers=bearer(TOKENS["reader"]))
        pub = await WSClient.connect(self.d, headers=bearer(TOKENS["pub"]))

        r = await anon.send_cmd({"op": "subscribe", "id": 1, "topic": "news.>"})
        self.assertErrorBody(r, "unauthorized", ws=True, rid=1)
        r = await anon.send_cmd({"op": "publish", "id": 2, "topic": "news.x", "data": "anon"})
        self.assertErrorBody(r, "unauthorized", ws=True, rid=2)
        r = await reader.send_cmd({"op": "publish", "id": 3, "topic": "news.x", "data": "rd"})
        self.assertErrorBody(r, "forbidden", ws=True, rid=3)
        r = await reader.send_cmd({"op": "subscribe", "id": 4, "topic": ">"})
        self.assertErrorBody(r, "forbidden", ws=True, rid=4)
        r = await pub.send_cmd({"op": "subscribe", "id": 5, "topic": "news.>"})
        self.assertErrorBody(r, "forbidden", ws=True, rid=5)
        # Connections stay usable after refusals.
        await anon.ping()
        await reader.ping()

        await watcher.expect_no_event(0.3)
        self.assertEqual(self.stored("news.>"), [])

        # An allowed publish reaches only the allowed subscriber: the refused subscriptions of
        # anon (news.>), reader (>) and pub (news.>) do not exist.
        r = await pub.publish("news.x", "ok")
        self.assertEqual(r.get("type"), "ok", r)
        self.assertEqual(r["receivers"], 1, r)
        ev = await watcher.recv_event()
        self.assertEqual((ev["topic"], ev["data"]), ("news.x", "ok"))
        for c in (anon, reader, pub):
            await c.expect_no_event(0.3)
        self.assertEqual(self.stored("news.>"), [("news.x", "ok")])

    # -- polling, SSE, delivery status ---------------------------------------------------

    def sse_status(self, pattern, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.d.port, timeout=5)
        try:
            conn.request("GET", topic_path(pattern) + "/sse?since=all", headers=headers or {})
            resp = conn.getresponse()
            ctype = resp.getheader("Content-Type", "")
            body = None if resp.status == 200 else json.loads(resp.read() or b"null")
            return resp.status, ctype, body
        finally:
            conn.close()

    def test_poll_and_sse_rights(self):
        self.assertEqual(self.post("news.a", "n1", bearer(TOKENS["pub"])).status, 202)
        self.assertDenied(self.poll("news.>"), 401)
        self.assertDenied(self.poll("news.>", bearer(TOKENS["pub"])), 403)
        self.assertDenied(self.poll("news.>", bearer(WRONG)), 401)
        self.assertDenied(self.poll("public.>", bearer(WRONG)), 401)
        # A pattern wider than the grant is refused, not silently narrowed.
        self.assertDenied(self.poll(">", bearer(TOKENS["reader"])), 403)
        self.assertDenied(self.poll("news.>", bearer(WRONG), {"token": TOKENS["reader"]}), 401)
        r = self.poll("news.>", query={"token": TOKENS["reader"]})
        self.assertEqual(r.status, 200, r)
        self.assertEqual([e["data"] for e in r.json["events"]], ["n1"])
        self.assertEqual(self.poll("public.>").status, 200)

        for headers, status in ((None, 401), (bearer(TOKENS["pub"]), 403), (bearer(WRONG), 401)):
            with self.subTest(headers=headers):
                st, _, body = self.sse_status("news.>", headers)
                self.assertEqual(st, status)
                self.assertErrorBody(body, {401: "unauthorized", 403: "forbidden"}[status])
        st, ctype, _ = self.sse_status("news.>", bearer(TOKENS["reader"]))
        self.assertEqual(st, 200)
        self.assertTrue(ctype.startswith("text/event-stream"), ctype)
        st, _, _ = self.sse_status("public.>")
        self.assertEqual(st, 200)

    def test_delivery_status_needs_read_right(self):
        r = self.post("news.a", "n1", bearer(TOKENS["pub"]))
        self.assertEqual(r.status, 202, r)
        path = "/v1/events/" + r.json["id"]
        self.assertDenied(self.d.get(path), 401)
        # Publishing a topic does not grant reading it back.
        self.assertDenied(self.d.get(path, bearer(TOKENS["pub"])), 403)
        self.assertDenied(self.d.get(path, bearer(WRONG)), 401)
        ok = self.d.get(path, bearer(TOKENS["reader"]))
        self.assertEqual(ok.status, 200, ok)
        self.assertEqual(ok.json["event"]["data"], "n1")

        r = self.post("public.a", "p1")
        self.assertEqual(r.status, 202, r)
        ok = self.d.get("/v1/events/" + r.json["id"])
        self.assertEqual(ok.status, 200, ok)
        self.assertEqual(ok.json["event"]["topic"], "public.a")

    # -- JWT -----------------------------------------------------------------------------

    def test_jwt_valid_expired_tampered_none(self):
        alice = user_jwt("alice")
        self.assertEqual(self.post("user.alice.inbox", "a1", bearer(alice)).status, 202)
        self.assertEqual(self.post("user.alice.inbox", "a2", query={"token": alice}).status, 202)
        self.assertDenied(self.post("user.bob.inbox", "a3", bearer(alice)), 403)
        # exp and nbf allow 5 s of skew, and no more.
        self.assertEqual(self.post("user.alice.inbox", "skew", bearer(user_jwt("alice", -2)))
                         .status, 202)
        self.assertDenied(self.post("user.alice.inbox", "exp", bearer(user_jwt("alice", -30))),
                          401)
        future = user_jwt("alice", 60, nbf=int(time.time()) + 60)
        self.assertDenied(self.post("user.alice.inbox", "nbf", bearer(future)), 401)

        head, payload, sig = alice.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["herald"]["pub"] = [">"]
        tampered = head + "." + b64url(json.dumps(claims).encode()) + "." + sig
        self.assertDenied(self.post("user.alice.inbox", "t1", bearer(tampered)), 401)
        self.assertDenied(self.post("user.alice.inbox", "t2", bearer(head + "." + payload + ".")),
                          401)
        wrong_key = make_jwt(claims, secret="not-" + SECRET)
        self.assertDenied(self.post("user.alice.inbox", "t3", bearer(wrong_key)), 401)
        unsigned = make_jwt({"sub": "alice", "exp": int(time.time()) + 60,
                             "herald": {"pub": [">"], "sub": [">"]}}, alg="none")
        self.assertDenied(self.post("user.alice.inbox", "none", bearer(unsigned)), 401)
        # alg none carrying a (valid HS256) signature is still not HS256.
        signed_none = make_jwt({"sub": "alice", "exp": int(time.time()) + 60,
                                "herald": {"pub": ["user.{sub}.>"], "sub": []}},
                               header={"alg": "none", "typ": "JWT"})
        self.assertDenied(self.post("user.alice.inbox", "none2", bearer(signed_none)), 401)

        r = self.d.get(topic_path("user.alice.>") + "/events?since=all", bearer(alice))
        self.assertEqual(r.status, 200, r)
        self.assertEqual([e["data"] for e in r.json["events"]], ["a1", "a2", "skew"])

    @async_test(30)
    async def test_jwt_sub_isolation(self):
        alice = await WSClient.connect(self.d, headers=bearer(user_jwt("alice")))
        bob_token = user_jwt("bob")
        await alice.subscribe("user.alice.>")
        for rid, pattern in ((11, "user.bob.>"), (12, "user.*.inbox"), (13, "user.>")):
            r = await alice.send_cmd({"op": "subscribe", "id": rid, "topic": pattern})
            self.assertErrorBody(r, "forbidden", ws=True, rid=rid)
        r = await alice.send_cmd({"op": "publish", "id": 14, "topic": "user.bob.inbox",
                                  "data": "spoof"})
        self.assertErrorBody(r, "forbidden", ws=True, rid=14)
        self.assertDenied(self.post("user.alice.inbox", "from-bob", bearer(bob_token)), 403)

        self.assertEqual(self.post("user.bob.inbox", "bob-own", bearer(bob_token)).status, 202)
        await alice.expect_no_event(0.3)
        self.assertEqual(self.post("user.alice.inbox", "hi", query={"token": user_jwt("alice")})
                         .status, 202)
        ev = await alice.recv_event()
        self.assertEqual((ev["topic"], ev["data"]), ("user.alice.inbox", "hi"))
        r = self.d.get(topic_path("user.bob.>") + "/events?since=all", bearer(bob_token))
        self.assertEqual([e["data"] for e in r.json["events"]], ["bob-own"])

    @async_test(20)
    async def test_jwt_expiry_closes_ws_1008(self):
        exp = math.ceil(time.time()) + 1
        token = make_jwt({"sub": "carol", "exp": exp,
                          "herald": {"pub": [], "sub": ["user.{sub}.>"]}})
        c = await WSClient.connect(self.d, headers=bearer(token))
        await c.subscribe("user.carol.>")
        other = await WSClient.connect(self.d, headers=bearer(TOKENS["reader"]))
        # Past exp but within the skew the connection is still served.
        await asyncio.sleep(max(0.0, exp + 3.5 - time.time()))
        try:
            await c.ping()
        except (ClosedError, websockets.ConnectionClosed) as e:
            self.fail(f"closed ({e}) at exp + {time.time() - exp:.1f} s, inside the "
                      f"5 s skew (expected closure at exp + 5..6 s)")
        left = exp + 8 - time.time()
        code = await c.wait_closed(timeout=max(left, 0.5))
        closed_at = time.time()
        self.assertEqual(code, 1008)
        self.assertGreaterEqual(closed_at, exp + 4.0, "closed before exp + skew")
        self.assertLessEqual(closed_at, exp + 7.5, "closed more than ~1 s after exp + skew")
        await other.ping()

    # -- SIGHUP --------------------------------------------------------------------------

    @async_test(30)
    async def test_sighup_removes_token(self):
        ops = await WSClient.connect(self.d, headers=bearer(TOKENS["ops"]))
        await ops.subscribe("news.>")
        reader = await WSClient.connect(self.d, headers=bearer(TOKENS["reader"]))
        await reader.subscribe("news.>")
        narrow = await WSClient.connect(self.d, headers=bearer(TOKENS["narrow"]))
        await narrow.subscribe("news.>")
        await narrow.subscribe("public.>")
        self.assertEqual(self.poll("news.>", bearer(TOKENS["ops"])).status, 200)

        self.d.rewrite_config(auth_config(self.secret_path, ("pub", "reader", "narrow"),
                                          narrow_news=False))
        mark = self.d.log_mark()
        self.d.send_signal(signal.SIGHUP)
        code = await ops.wait_closed(timeout=5)
        self.assertEqual(code, 1008)
        self.assertDenied(self.poll("news.>", bearer(TOKENS["ops"])), 401)
        self.assertTrue(self.d.alive(), "heraldd died on SIGHUP")

        # The other connections stay open; narrow lost only its news.> subscription.
        await reader.ping()
        await narrow.ping()
        r = self.post("news.b", "after", bearer(TOKENS["pub"]))
        self.assertEqual(r.status, 202, r)
        self.assertEqual(r.json["receivers"], 1, r)
        ev = await reader.recv_event()
        self.assertEqual(ev["data"], "after")
        await narrow.expect_no_event(0.3)
        self.assertEqual(self.post("public.b", "pub-after").status, 202)
        ev = await narrow.recv_event()
        self.assertEqual(ev["data"], "pub-after")
        self.assertIsNone(self.d.wait_for_log(r"level=(error|fatal)", timeout=0.1, start=mark),
                          "reload logged an error")


# -- listeners beyond loopback -----------------------------------------------------------

class RemoteListenTest(HeraldTestCase):
    def run_daemon(self, config=None):
        cmd = [heraldd_path()]
        path = None
        if config is not None:
            fd, path = tempfile.mkstemp(prefix="herald-it-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(config, f)
            self.addCleanup(os.unlink, path)
            cmd += ["-c", path]
        cmd += ["--listen", "0.0.0.0:0"]
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        try:
            return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env,
                                  timeout=10)
        except subprocess.TimeoutExpired:
            self.fail(f"heraldd {cmd} kept running instead of refusing to start")

    def test_refuses_0000_without_auth(self):
        p = self.run_daemon()
        self.assertEqual(p.returncode, 1, p)
        self.assertTrue(p.stderr.strip(), "no message explaining the refusal")
        p = self.run_daemon({"log": {"level": "info"}})
        self.assertEqual(p.returncode, 1, p)

    def test_refuses_remote_anonymous_publish(self):
        p = self.run_daemon({"auth": {"anonymous": {"publish": ["public.>"], "subscribe": []}}})
        self.assertEqual(p.returncode, 1, p)
        self.assertIn(b"allow_remote_publish", p.stderr)

    def test_remote_allowed_with_auth(self):
        for anon in ({"publish": [], "subscribe": ["public.>"]},
                     {"publish": ["public.>"], "subscribe": [], "allow_remote_publish": True}):
            with self.subTest(anon=anon):
                d = Daemon({"auth": {"anonymous": anon}}, listen=False,
                           args=["--listen", "0.0.0.0:0"])
                self.addCleanup(self._finish_daemon, d)
                d.start()
                m = d.wait_for_log(r'msg="listening".*\bport=(\d+)', timeout=10)
                self.assertIsNotNone(m, f"heraldd did not start:\n{d.log_tail()}")
                self.assertTrue(d.alive())
                self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    unittest.main()
