# SPDX-License-Identifier: MIT
"""systemd/heraldd.service as shipped: `systemd-analyze verify` finds nothing to say, the offline
security score is 2.0 ("OK") or better, the settings the service contract depends on are there,
and heraldd still serves under the unit's sandbox. systemd need not be running: verify and
security work offline, and the sandbox (system-call filter, address families,
MemoryDenyWriteExecute, an unprivileged user without capabilities, the file limit and umask) is
rebuilt from the unit's own lines with libseccomp and applied before exec.
"""

import ctypes
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

from herald_testlib import REPO, Daemon, HeraldTestCase, WSClient, async_test, heraldd_path

UNIT = os.path.join(REPO, "systemd", "heraldd.service")
MAX_EXPOSURE = 2.0
DYNAMIC_UID = 61184  # first uid systemd hands out for DynamicUser=
SCORE_RE = re.compile(r"Overall exposure level for heraldd\.service:\s*([0-9]+(?:\.[0-9]+)?)")


def systemd_analyze():
    path = shutil.which("systemd-analyze")
    if not path:
        raise AssertionError("systemd-analyze not found: install the 'systemd' package "
                             "(scripts/debian-packages.txt)")
    return path


def analyze_env():
    env = dict(os.environ)
    env.update({"SYSTEMD_LOG_LEVEL": "notice", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0",
                "LC_ALL": "C.UTF-8"})
    return env


def unit_settings(path=UNIT):
    """{section: [(key, value), ...]} in file order; repeated keys stay repeated."""
    sections, current = {}, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                current = sections.setdefault(line[1:-1], [])
                continue
            key, sep, value = line.partition("=")
            if not sep or current is None:
                raise AssertionError(f"{path}: cannot parse {line!r}")
            current.append((key.strip(), value.strip()))
    return sections


def service_values(key):
    return [v for k, v in unit_settings()["Service"] if k == key]


def service_value(key):
    values = service_values(key)
    return values[-1] if values else None


def unit_copy_for(heraldd, directory):
    """The unit with /usr/bin/heraldd replaced by the binary under test (verify checks that
    every Exec*= command exists), written as heraldd.service in directory."""
    with open(UNIT) as f:
        text = f.read()
    path = os.path.join(directory, "heraldd.service")
    with open(path, "w") as f:
        f.write(text.replace("/usr/bin/heraldd", os.path.abspath(heraldd)))
    return path


class UnitFileTest(unittest.TestCase):
    def setUp(self):
        self.heraldd = heraldd_path()
        self.tmp = tempfile.mkdtemp(prefix="herald-unit-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def test_systemd_analyze_verify_is_silent(self):
        unit = unit_copy_for(self.heraldd, self.tmp)
        r = subprocess.run([systemd_analyze(), "verify", "--man=no", unit],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=120, env=analyze_env())
        # verify exits 0 even for unknown keys and bad values; anything it says about our
        # unit is a mistake. (It may mention other units of the host; those are not ours.)
        ours = [line for line in (r.stdout + r.stderr).splitlines()
                if "heraldd" in line or unit in line]
        self.assertEqual(r.returncode, 0, f"systemd-analyze verify failed:\n{r.stdout}{r.stderr}")
        self.assertEqual(ours, [], "systemd-analyze verify complains:\n" + "\n".join(ours))

    def test_offline_security_exposure_at_most_2(self):
        r = subprocess.run([systemd_analyze(), "security", "--offline=yes", "--no-pager", UNIT],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=120, env=analyze_env())
        m = SCORE_RE.search(r.stdout + r.stderr)
        self.assertIsNotNone(m, f"no overall exposure level in:\n{r.stdout}{r.stderr}")
        score = float(m.group(1))
        exposed = [line for line in r.stdout.splitlines() if line.startswith("✗")]
        self.assertLessEqual(score, MAX_EXPOSURE,
                             f"exposure {score} > {MAX_EXPOSURE}; open items:\n" +
                             "\n".join(exposed))

    def test_service_contract(self):
        s = dict(unit_settings()["Service"])  # last value wins, as in systemd
        self.assertEqual(s.get("Type"), "notify")
        self.assertEqual(service_values("ExecStart"),
                         ["/usr/bin/heraldd -c /etc/herald/heraldd.json"])
        reload_cmds = service_values("ExecReload")
        self.assertTrue(any(re.search(r"\bkill\b.*-(HUP|SIGHUP|s HUP)\b.*\$MAINPID", c)
                            for c in reload_cmds), f"no SIGHUP in ExecReload: {reload_cmds}")
        self.assertEqual(s.get("Restart"), "on-failure")
        self.assertTrue(s.get("WatchdogSec"), "no WatchdogSec=")
        self.assertEqual(s.get("DynamicUser"), "yes")
        self.assertEqual(s.get("StateDirectory"), "herald")
        self.assertEqual(s.get("NotifyAccess"), "main")
        # 100k client sockets plus the listeners, the store and libraries.
        self.assertGreaterEqual(int(s.get("LimitNOFILE", "0").split(":")[0]), 100000 + 1024)
        self.assertEqual(s.get("CapabilityBoundingSet"), "")
        self.assertNotIn("IPAddressDeny", s, "the daemon must accept the clients it listens for")
        self.assertEqual(unit_settings()["Install"], [("WantedBy", "multi-user.target")])


# -- the sandbox, rebuilt from the unit --------------------------------------------------

AF_NUMBERS = {"AF_UNIX": 1, "AF_LOCAL": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16,
              "AF_PACKET": 17}
AF_MAX = 46
SCMP_ACT_ALLOW = 0x7fff0000
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000


def SCMP_ACT_ERRNO(e):
    return 0x00050000 | (e & 0xffff)


class ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def syscall_groups():
    out = subprocess.run([systemd_analyze(), "syscall-filter", "--no-pager"], capture_output=True,
                         text=True, check=True, env=analyze_env(), timeout=60).stdout
    groups, cur = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            cur = groups.setdefault(line.strip(), [])
        elif cur is not None and line.strip() and not line.strip().startswith("#"):
            cur.append(line.strip())
    return groups


def expand(names, groups, seen=None):
    seen = set() if seen is None else seen
    out = set()
    for n in names:
        if n.startswith("@"):
            if n not in seen:
                seen.add(n)
                if n not in groups:
                    raise AssertionError(f"unknown system call group {n}")
                out |= expand(groups[n], groups, seen)
        else:
            out.add(n)
    return out


def sandbox_spec():
    """What the unit allows, in the terms the exec helper applies (see run_sandboxed)."""
    groups = syscall_groups()
    allowed, mode = None, None
    for value in service_values("SystemCallFilter"):
        deny = value.startswith("~")
        names = value.lstrip("~").split()
        if any(":" in n for n in names):
            raise AssertionError("per-call errno in SystemCallFilter= is not modelled here")
        if mode is None:
            mode = "deny" if deny else "allow"
            # systemd adds @default to every allow list.
            allowed = expand(["@default"], groups) if mode == "allow" else set()
        if mode != "allow":
            raise AssertionError("the unit is expected to use an allow list")
        if deny:
            allowed -= expand(names, groups)
        else:
            allowed |= expand(names, groups)
    families = []
    for value in service_values("RestrictAddressFamilies"):
        for name in value.split():
            families.append(AF_NUMBERS[name])
    err = service_value("SystemCallErrorNumber")
    return {
        "syscalls": sorted(allowed or ()),
        "errno": getattr(errno, err) if err else None,
        "families": sorted(set(families)),
        "mdwe": service_value("MemoryDenyWriteExecute") == "yes",
        "nofile": int(service_value("LimitNOFILE")),
        "umask": int(service_value("UMask") or "0022", 8),
        "uid": DYNAMIC_UID if service_value("DynamicUser") == "yes" and os.geteuid() == 0
        else None,
        "drop_caps": service_value("CapabilityBoundingSet") == "",
    }


def run_sandboxed(spec, argv):
    """Applies spec to this process and execs argv. Used as `python3 test_unit.py
    --sandbox-exec SPEC -- heraldd ...` so the daemon is the process the harness watches."""
    import resource
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(ScmpArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]

    # Without SystemCallErrorNumber= systemd kills the process; EPERM is what the unit says.
    ctx = lib.seccomp_init(SCMP_ACT_ERRNO(spec["errno"]) if spec["errno"] else 0)
    if not ctx:
        raise OSError("seccomp_init failed")

    def rule(action, name, conds=()):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            return  # not a system call on this architecture (systemd skips those too)
        arr = (ScmpArgCmp * max(1, len(conds)))(*[ScmpArgCmp(*c) for c in conds])
        r = lib.seccomp_rule_add_array(ctx, action, nr, len(conds), arr)
        if r:
            raise OSError(-r, f"seccomp rule for {name}")

    conditional = {"socket"} | ({"mmap", "mprotect", "pkey_mprotect", "shmat"}
                                if spec["mdwe"] else set())
    for name in spec["syscalls"]:
        if name not in conditional:
            rule(SCMP_ACT_ALLOW, name)
    if "socket" in spec["syscalls"]:
        # RestrictAddressFamilies=: other families fail with EAFNOSUPPORT.
        for fam in range(AF_MAX):
            act = SCMP_ACT_ALLOW if fam in spec["families"] else SCMP_ACT_ERRNO(errno.EAFNOSUPPORT)
            rule(act, "socket", [(0, SCMP_CMP_MASKED_EQ, 0xffffffff, fam)])
    if spec["mdwe"]:
        # MemoryDenyWriteExecute=: no mapping both writable and executable, no mprotect to exec.
        for prot in (0, PROT_WRITE, PROT_EXEC):
            rule(SCMP_ACT_ALLOW, "mmap", [(2, SCMP_CMP_MASKED_EQ, PROT_WRITE | PROT_EXEC, prot)])
        for name in ("mprotect", "pkey_mprotect"):
            rule(SCMP_ACT_ALLOW, name, [(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)])
        rule(SCMP_ACT_ALLOW, "shmat", [(2, SCMP_CMP_MASKED_EQ, SHM_EXEC, 0)])

    want = spec["nofile"]
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        # A container may forbid raising the hard limit; systemd (as PID 1) can.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    os.umask(spec["umask"])
    if spec["uid"] is not None:
        if spec["drop_caps"]:
            libc = ctypes.CDLL(None, use_errno=True)
            cap = 0
            while libc.prctl(24, cap, 0, 0, 0) == 0:  # PR_CAPBSET_DROP until EINVAL
                cap += 1
        os.setgroups([])
        os.setgid(spec["uid"])
        os.setuid(spec["uid"])
    r = lib.seccomp_load(ctx)  # also sets no_new_privs, as NoNewPrivileges=yes does
    if r:
        raise OSError(-r, "seccomp_load")
    os.execv(argv[0], argv)


def world_reachable(path):
    """Whether an unprivileged user can reach and execute path."""
    path = os.path.abspath(path)
    if not os.stat(path).st_mode & 0o001:
        return False
    d = os.path.dirname(path)
    while True:
        if not os.stat(d).st_mode & 0o001:
            return False
        if d == "/":
            return True
        d = os.path.dirname(d)


class SandboxedDaemon(Daemon):
    def __init__(self, spec, **kw):
        super().__init__(**kw)
        self.spec = spec

    def command(self):
        cmd = super().command()
        if self.config_path:
            os.chmod(self.config_path, 0o644)  # readable by the dynamic user, like /etc/herald
        return [sys.executable, os.path.abspath(__file__), "--sandbox-exec",
                json.dumps(self.spec), "--"] + cmd


class SandboxTest(HeraldTestCase):
    def setUp(self):
        exe = heraldd_path()
        with open(exe, "rb") as f:
            if b"__asan_init" in f.read():
                self.skipTest("sanitizer build: LeakSanitizer needs ptrace, which the unit's "
                              "filter denies (as it should)")
        try:
            ctypes.CDLL("libseccomp.so.2")
        except OSError:
            self.skipTest("libseccomp2 is not installed")
        self.spec = sandbox_spec()
        if self.spec["uid"] is not None and not world_reachable(exe):
            self.skipTest(f"{exe} is not reachable by an unprivileged user")
        self.data_dir = tempfile.mkdtemp(prefix="herald-state-")
        self.addCleanup(shutil.rmtree, self.data_dir, True)
        os.chmod(self.data_dir, 0o700)
        if self.spec["uid"] is not None:
            os.chown(self.data_dir, self.spec["uid"], self.spec["uid"])

    @async_test(timeout=60)
    async def test_daemon_serves_inside_the_unit_sandbox(self):
        config = {"data_dir": self.data_dir, "history": {"store": "sqlite"},
                  "log": {"level": "info"}}
        d = SandboxedDaemon(self.spec, config=config)
        self.addCleanup(self._finish_daemon, d)
        d.start()
        c = await WSClient.connect(d)
        await c.subscribe("public.news")
        status, _, reply = d.publish("public.news", {"n": 1}, content_type="application/json")
        self.assertEqual(status, 202, reply)
        ev = await c.recv_event()
        self.assertEqual(ev["data"], {"n": 1})
        mark = d.log_mark()
        d.send_signal(signal.SIGHUP)
        self.assertTrue(d.wait_for_log(r'msg="configuration reloaded"', start=mark),
                        "SIGHUP reload failed inside the sandbox")
        await c.ping()
        self.assertNotRegex(d.log, r"level=(warn|error)",
                            "the sandbox made heraldd complain")
        # UMask=0077: whatever the store wrote is private to the service.
        for root, _, files in os.walk(self.data_dir):
            for name in files:
                mode = os.stat(os.path.join(root, name)).st_mode & 0o777
                self.assertEqual(mode & 0o077, 0, f"{name} is mode {mode:o}")

    def test_filter_really_applies(self):
        # The harness must not pass vacuously: a call the unit denies fails inside it.
        probe = ("import ctypes, errno, os\n"
                 "libc = ctypes.CDLL(None, use_errno=True)\n"
                 "r = libc.syscall(160, 0, 0)\n"  # setrlimit (x86_64) is in ~@resources
                 "print(r, ctypes.get_errno())\n")
        if os.uname().machine != "x86_64":
            self.skipTest("probe uses the x86_64 system call number")
        cmd = [sys.executable, os.path.abspath(__file__), "--sandbox-exec",
               json.dumps(self.spec), "--", sys.executable, "-c", probe]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        self.assertEqual(r.stdout.split(), ["-1", str(errno.EPERM)], r.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "--sandbox-exec" and sys.argv[3] == "--":
        run_sandboxed(json.loads(sys.argv[2]), sys.argv[4:])
    unittest.main()
