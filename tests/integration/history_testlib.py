# SPDX-License-Identifier: MIT
"""Helpers for the history, polling, SSE, status, crash and abandoned-client suites.

Adds to herald_testlib what those suites share: polling (one page, or every page following
`next`), a Server-Sent Events reader on a raw socket (so tests see the exact framing and can
drop the connection however they like), publisher threads that keep publishing over
keep-alive HTTP and remember every acknowledged id, and CPU sampling of the daemon from /proc.
Every wait is bounded.
"""

import http.client
import json
import os
import socket
import struct
import threading
import time
import urllib.parse

from herald_testlib import DEFAULT_TIMEOUT, HTTPClient, topic_path

PATTERN_SAFE = "$.:@-_*>"


def wait_until(fn, timeout=DEFAULT_TIMEOUT, interval=0.05):
    """Calls fn until it returns something true or timeout passes; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


# -- polling -----------------------------------------------------------------------------

def poll_path(pattern, since=None, limit=None, wait=None, extra=None):
    q = []
    if since is not None:
        q.append(("since", since))
    if limit is not None:
        q.append(("limit", str(limit)))
    if wait is not None:
        q.append(("wait", str(wait)))
    q += list(extra or [])
    path = topic_path(pattern) + "/events"
    if q:
        path += "?" + urllib.parse.urlencode(q)
    return path


def poll(d_or_client, pattern, since=None, limit=None, wait=None, headers=None, timeout=None):
    """One GET /v1/topics/{pattern}/events; returns a herald_testlib.Response.
    d_or_client is a Daemon (a fresh connection) or an HTTPClient (reused)."""
    path = poll_path(pattern, since, limit, wait)
    if timeout is None:
        timeout = DEFAULT_TIMEOUT + (float(wait) if isinstance(wait, (int, float)) else 0)
    if isinstance(d_or_client, HTTPClient):
        return d_or_client.get(path, headers)
    return d_or_client.get(path, headers=headers, timeout=timeout)


def check_page(tc, r):
    """Asserts r is a 200 poll answer with the documented shape; returns its JSON."""
    tc.assertEqual(r.status, 200, r)
    body = r.json
    tc.assertIsInstance(body, dict, r)
    tc.assertEqual(set(body), {"events", "next", "gap"}, body)
    tc.assertIsInstance(body["events"], list, body)
    tc.assertIsInstance(body["next"], str, body)
    tc.assertIsInstance(body["gap"], bool, body)
    tc.assertEventId(body["next"])
    for ev in body["events"]:
        tc.assertEqual(ev.get("type"), "event", ev)
    return body


def poll_all(tc, d, pattern, since="all", limit=1000, max_pages=10000):
    """Follows `next` from `since` until an empty page. Returns (events, first page's gap,
    pages, the final next). Asserts that no page after the first reports a gap."""
    events, first_gap, pages = [], None, 0
    with d.http(timeout=30) as c:
        cursor = since
        while True:
            body = check_page(tc, poll(c, pattern, since=cursor, limit=limit))
            pages += 1
            if first_gap is None:
                first_gap = body["gap"]
            else:
                tc.assertFalse(body["gap"], f"gap on page {pages} (since={cursor})")
            events += body["events"]
            if not body["events"]:
                return events, first_gap, pages, body["next"]
            tc.assertLessEqual(len(body["events"]), limit)
            tc.assertEqual(body["next"], body["events"][-1]["id"],
                           "next of a non-empty page is not its last event's id")
            cursor = body["next"]
            if pages >= max_pages:
                raise AssertionError(f"still paging after {pages} pages")


# -- Server-Sent Events ------------------------------------------------------------------

class SSERecord:
    """One dispatched SSE record: fields as sent (id, event, data) and the comment lines
    (without the leading colon) that came before it since the previous record."""

    def __init__(self, fields, comments, raw):
        self.fields = fields
        self.comments = comments
        self.raw = raw

    @property
    def id(self):
        return self.fields.get("id")

    @property
    def event(self):
        return self.fields.get("event")

    @property
    def data(self):
        return self.fields.get("data")

    def json(self):
        return json.loads(self.data)

    def __repr__(self):
        return f"<SSERecord {self.raw[:200]!r}>"


class SSEStream:
    """GET /v1/topics/{pattern}/sse on a raw socket. The constructor reads the response head;
    next_record() returns the following records. Understands chunked and close-delimited
    bodies. `comments` keeps every comment line with its arrival time."""

    def __init__(self, port, pattern, since=None, last_event_id=None, headers=None,
                 timeout=DEFAULT_TIMEOUT, query=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        q = dict(query or {})
        if since is not None:
            q["since"] = since
        path = topic_path(pattern) + "/sse"
        if q:
            path += "?" + urllib.parse.urlencode(q)
        self.path = path
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: text/event-stream",
                 "Cache-Control: no-cache"]
        if last_event_id is not None:
            lines.append(f"Last-Event-ID: {last_event_id}")
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.raw = bytearray()   # undecoded bytes after the head
        self.text = ""           # decoded body text not yet split into lines
        self.eof = False
        self.comments = []       # (monotonic time, comment text)
        self._fields, self._comments, self._rawrec = {}, [], ""
        self.records = []
        head = bytearray()
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in head:
            left = deadline - time.monotonic()
            if left <= 0 or len(head) > 65536:
                self.close()
                raise AssertionError(f"no SSE response head within {timeout}s: {head[:300]!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            head += chunk
        h, sep, rest = bytes(head).partition(b"\r\n\r\n")
        if not sep:
            self.close()
            raise AssertionError(f"connection closed before the SSE response head: {h[:300]!r}")
        status_line, *hlines = h.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {}
        for line in hlines:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self.content_length = (int(self.headers["content-length"])
                               if "content-length" in self.headers else None)
        self._feed(rest)

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    def _feed(self, data):
        self.raw += data
        if self.chunked:
            out = bytearray()
            while True:
                crlf = self.raw.find(b"\r\n")
                if crlf < 0:
                    break
                size = int(bytes(self.raw[:crlf]).split(b";")[0] or b"0", 16)
                if size == 0:
                    self.eof = True
                    del self.raw[:]
                    break
                if len(self.raw) < crlf + 2 + size + 2:
                    break
                out += self.raw[crlf + 2:crlf + 2 + size]
                del self.raw[:crlf + 2 + size + 2]
            data = bytes(out)
        else:
            data = bytes(self.raw)
            del self.raw[:]
        self.text += data.decode("utf-8")

    def _parse(self):
        """Splits complete lines off self.text; returns a finished record or None."""
        while True:
            nl = self.text.find("\n")
            if nl < 0:
                return None
            line, self.text = self.text[:nl], self.text[nl + 1:]
            if line.endswith("\r"):
                line = line[:-1]
            if line == "":
                if self._fields:
                    rec = SSERecord(self._fields, self._comments, self._rawrec)
                    self._fields, self._comments, self._rawrec = {}, [], ""
                    self.records.append(rec)
                    return rec
                continue
            self._rawrec += line + "\n"
            if line.startswith(":"):
                text = line[1:].lstrip(" ")
                self._comments.append(text)
                self.comments.append((time.monotonic(), text))
                continue
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name in self._fields and name == "data":
                self._fields[name] += "\n" + value
            else:
                self._fields[name] = value

    def _fill(self, timeout):
        self.sock.settimeout(max(timeout, 0.001))
        chunk = self.sock.recv(65536)
        if not chunk:
            self.eof = True
            return
        self._feed(chunk)

    def next_record(self, timeout=DEFAULT_TIMEOUT):
        """The next record. AssertionError on timeout or when the server closed the stream."""
        deadline = time.monotonic() + timeout
        while True:
            rec = self._parse()
            if rec:
                return rec
            if self.eof:
                raise AssertionError(f"SSE stream closed by the server (pending {self.text!r})")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no SSE record within {timeout}s "
                                     f"({len(self.records)} read so far)")
            try:
                self._fill(left)
            except socket.timeout:
                pass

    def next_event(self, timeout=DEFAULT_TIMEOUT):
        """The next record that carries a Herald event, parsed; gap notices are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            rec = self.next_record(max(0.0, deadline - time.monotonic()))
            if rec.event != "gap":
                return rec.json()

    def wait_comment(self, text, timeout):
        """Reads (keeping records) until a comment equal to text arrives; returns its time."""
        deadline = time.monotonic() + timeout
        seen = len(self.comments)
        while True:
            for t, c in self.comments[seen:]:
                if c == text:
                    return t
            seen = len(self.comments)
            self._parse()
            if self.eof:
                raise AssertionError("SSE stream closed while waiting for a comment")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                self._fill(left)
            except socket.timeout:
                pass

    def read_to_end(self, timeout=DEFAULT_TIMEOUT):
        """Reads until the server ends the stream; AssertionError when it does not."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the SSE stream did not end within {timeout}s")
            try:
                self._fill(left)
            except socket.timeout:
                pass

    def close(self, reset=False):
        try:
            if reset:
                abort_socket(self.sock)
            else:
                self.sock.close()
        except OSError:
            pass


def abort_socket(sock):
    """Closes with SO_LINGER 0: the kernel sends RST instead of FIN, as a crashed peer would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def raw_get(port, path, headers=None, timeout=DEFAULT_TIMEOUT):
    """Sends a GET on a fresh socket and returns the socket without reading anything."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


# -- publishers --------------------------------------------------------------------------

class Publisher(threading.Thread):
    """Publishes {"p": tag, "seq": i, ...pad} to `topic` (or topic_fn(i)) over one keep-alive
    HTTP connection until stop() or `count` events, optionally pausing `interval` seconds
    between publishes. Keeps every acknowledged (seq, reply) in order. A connection error ends
    the thread quietly when `tolerate_errors` (crash tests); otherwise it is kept in `error`."""

    def __init__(self, port, topic, tag=0, count=None, interval=0.0, pad="",
                 tolerate_errors=False, timeout=10.0, topic_fn=None):
        super().__init__(daemon=True)
        self.port = port
        self.topic = topic
        self.topic_fn = topic_fn
        self.tag = tag
        self.count = count
        self.interval = interval
        self.pad = pad
        self.tolerate_errors = tolerate_errors
        self.timeout = timeout
        self.acked = []          # (seq, reply json)
        self.attempted = 0       # publishes sent (acknowledged or not)
        self.refused = []        # (seq, status, body) for non-202 answers
        self.error = None
        self.started_at = None
        self._stop_evt = threading.Event()

    def data(self, seq):
        d = {"p": self.tag, "seq": seq}
        if self.pad:
            d["pad"] = self.pad
        return d

    def run(self):
        self.started_at = time.monotonic()
        c = HTTPClient(self.port, self.timeout)
        try:
            seq = 0
            while not self._stop_evt.is_set() and (self.count is None or seq < self.count):
                topic = self.topic_fn(seq) if self.topic_fn else self.topic
                self.attempted = seq + 1
                status, _, r = c.publish(topic, self.data(seq), "application/json")
                if status == 202:
                    self.acked.append((seq, r))
                else:
                    self.refused.append((seq, status, r))
                    if not self.tolerate_errors:
                        raise AssertionError(f"publish {seq} to {topic} got {status} {r}")
                seq += 1
                if self.interval:
                    self._stop_evt.wait(self.interval)
        except (OSError, http.client.HTTPException, AssertionError) as e:
            if not (self.tolerate_errors and isinstance(e, (OSError, http.client.HTTPException))):
                self.error = e
        finally:
            c.close()

    def stop(self):
        self._stop_evt.set()

    def finish(self, timeout=30.0):
        """Stops, joins (bounded) and re-raises a publishing error."""
        self.stop()
        self.join(timeout)
        if self.is_alive():
            raise AssertionError(f"publisher {self.tag} still running after {timeout}s")
        if self.error:
            raise AssertionError(f"publisher {self.tag} failed: {self.error!r}")

    @property
    def ids(self):
        return [r["id"] for _, r in self.acked]


# -- CPU ---------------------------------------------------------------------------------

def proc_cpu_seconds(pid):
    """User + system CPU time of a process, in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def cpu_fraction(pid, duration=3.0):
    """Share of one core the process used over `duration` seconds of wall time."""
    c0, t0 = proc_cpu_seconds(pid), time.monotonic()
    time.sleep(duration)
    c1, t1 = proc_cpu_seconds(pid), time.monotonic()
    return (c1 - c0) / (t1 - t0)
