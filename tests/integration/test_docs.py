# SPDX-License-Identifier: MIT
"""The first-run documents do what they say (issue 16): the README's set-up command works as
root on a machine without sudo (a fresh Debian container) and as a user with sudo; the
websocat example (Debian does not package websocat) is gone in favour of the herald CLI the
build makes and python3-websockets; valgrind is installed with the other packages and CMake
says so when it is missing instead of silently creating fewer tests; tests/run-all keeps out
of the Quick start's build/ and times its stages; there is one source of service docs;
clients/PROTOCOL.md lists the error codes the daemon has and no server topic it does not.
"""

import os
import re
import shutil
import subprocess
import tempfile
import unittest

from herald_testlib import REPO, build_dir


def read(*parts):
    with open(os.path.join(REPO, *parts)) as f:
        return f.read()


def quick_start_commands():
    """The shell commands of the README's Quick start section, in order."""
    text = read("README.md")
    section = text[text.index("## Quick start"):text.index("\n## ", text.index("## Quick start") + 3)]
    return re.findall(r"```sh\n(.*?)\n```", section, re.S)


class QuickStartTest(unittest.TestCase):
    def run_setup(self, with_sudo):
        """Runs the README's first command up to the build with apt-get (and sudo when
        with_sudo) replaced by stubs that record their arguments; returns the record."""
        setup = quick_start_commands()[0]
        install = setup.split("&& cmake")[0].strip().rstrip("&").strip()
        stubs = tempfile.mkdtemp(prefix="herald-stubs-")
        self.addCleanup(shutil.rmtree, stubs, True)
        record = os.path.join(stubs, "record")
        for name in ("apt-get",) + (("sudo",) if with_sudo else ()):
            path = os.path.join(stubs, name)
            with open(path, "w") as f:
                f.write(f'#!/bin/sh\necho "{name} $*" >> {record}\n')
                if name == "sudo":
                    f.write('exec "$@"\n')
            os.chmod(path, 0o755)
        os.symlink(shutil.which("cat"), os.path.join(stubs, "cat"))
        # PATH has the stubs only: no sudo, unless stubbed, as in a fresh container.
        p = subprocess.run(["/bin/sh", "-c", install], cwd=REPO, capture_output=True, text=True,
                           env={"PATH": stubs}, timeout=30)
        self.assertEqual(p.returncode, 0, f"{install!r} failed: {p.stderr}")
        with open(record) as f:
            return f.read().splitlines()

    def test_setup_works_as_root_without_sudo(self):
        lines = self.run_setup(with_sudo=False)
        self.assertEqual(lines[0], "apt-get update")
        self.assertTrue(lines[1].startswith("apt-get install -y build-essential"), lines)
        self.assertIn("valgrind", lines[1].split())

    def test_setup_uses_sudo_when_there_is_one(self):
        lines = self.run_setup(with_sudo=True)
        self.assertEqual([l.split()[0] for l in lines], ["sudo", "apt-get", "sudo", "apt-get"],
                         lines)

    def test_no_command_starts_with_sudo(self):
        for cmd in quick_start_commands():
            self.assertNotRegex(cmd, r"(^|&&\s*)sudo\s", cmd)

    def test_websocket_example_uses_what_debian_and_the_build_have(self):
        text = read("README.md")
        self.assertNotIn("websocat", text)
        self.assertIn("build/clients/herald subscribe", text)
        self.assertIn('"type":"welcome"', text)
        self.assertTrue(os.path.exists(os.path.join(build_dir(), "clients", "herald")),
                        "the README names build/clients/herald, which the build does not make")

    def test_fast_subset_is_documented(self):
        self.assertIn("ctest --test-dir build -LE nosan", read("README.md"))


class TestRunnerTest(unittest.TestCase):
    def test_run_all_has_its_own_build_dirs_and_times_stages(self):
        text = read("tests", "run-all")
        self.assertNotRegex(text, r"-B build(\s|$)", "run-all reconfigures the Quick start's build/")
        self.assertNotRegex(text, r"--test-dir build(\s|$)")
        self.assertIn("build-test", text)
        self.assertRegex(text, r'echo "-- \$\{stage_name\}: \$\(\(SECONDS')

    def test_missing_valgrind_is_said_at_configure(self):
        out = tempfile.mkdtemp(prefix="herald-cfg-")
        self.addCleanup(shutil.rmtree, out, True)
        p = subprocess.run(["cmake", "-S", REPO, "-B", out,
                            "-DHERALD_VALGRIND=/nonexistent/valgrind"],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(p.returncode, 0, p.stderr[-2000:])
        self.assertRegex(p.stdout + p.stderr, r"valgrind is not installed: the valgrind\.\* tests")
        listed = subprocess.run(["ctest", "--test-dir", out, "-N", "-L", "nosan"],
                                capture_output=True, text=True, timeout=60).stdout
        self.assertNotIn("valgrind.test_", listed)

    def test_valgrind_is_in_the_package_list(self):
        self.assertIn("valgrind", read("scripts", "debian-packages.txt").split())


class DocsTest(unittest.TestCase):
    def test_one_source_for_the_service_docs(self):
        text = read("systemd", "README-service.md")
        self.assertNotIn("auth-service", text)
        self.assertNotIn("###", text, "systemd/README-service.md is a copy again, not a pointer")
        self.assertIn("README.md#run-as-a-service", text)
        self.assertIn("## Run as a service", read("README.md"))
        self.assertNotIn("auth-service", read("README.md"))

    def test_protocol_lists_the_codes_the_daemon_has(self):
        codes = set(re.findall(r'\[HD_ERR_\w+\] = \{"(\w+)"', read("src", "protocol.c")))
        self.assertIn("method_not_allowed", codes)
        doc = read("clients", "PROTOCOL.md")
        http = doc[doc.index("## 4. HTTP"):]
        http = http[:http.index("\n\n", http.index("Errors on every HTTP endpoint"))]
        for code in ("bad_request", "invalid_topic", "unauthorized", "forbidden", "not_found",
                     "method_not_allowed", "too_large", "rate_limited", "internal",
                     "unavailable"):
            self.assertIn(f"`{code}`", http, f"{code} missing from the HTTP error list")
        for code in re.findall(r"`([a-z_]+)`", http):
            if "_" in code or code in ("internal", "forbidden", "unauthorized"):
                self.assertIn(code, codes | {"max_header_bytes", "max_connections"}, code)

    def test_protocol_names_no_server_topic_that_does_not_exist(self):
        doc = read("clients", "PROTOCOL.md")
        src = "".join(read("src", f) for f in os.listdir(os.path.join(REPO, "src"))
                      if f.endswith(".c") and f not in ("registry.c", "topic.c"))
        for topic in set(re.findall(r"\$sys\.[a-z]+", doc)):
            if topic != "$sys.x":  # the doc's placeholder
                self.assertIn(f'"{topic}', src, f"{topic} is documented but never published")
        self.assertNotIn("$sys.stats", doc)


if __name__ == "__main__":
    unittest.main()
