# SPDX-License-Identifier: MIT
"""The Debian package (cmake/Packaging.cmake): `cpack -G DEB` in the build directory under test
($HERALD_BUILD_DIR) into a temporary directory, then, with dpkg's own tools: the control fields,
a Depends that covers every shared library the packaged ELF files load plus the libuv plugin of
libwebsockets (dlopen()ed, so no ELF file names it), the file list with owners and modes, the
conffile and maintainer scripts, a packaged heraldd that accepts the packaged configuration, and
an install / reinstall / remove / purge cycle with dpkg into an empty root.
"""

import glob
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import unittest

from herald_testlib import REPO, build_dir

CONFIG = "/etc/herald/heraldd.json"
UNIT = "/usr/lib/systemd/system/heraldd.service"


def run(cmd, timeout=300, check=True, **kw):
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def need(tool, package):
    path = shutil.which(tool)
    if not path:
        raise AssertionError(f"{tool} not found: install {package} (scripts/debian-packages.txt)")
    return path


def read(path):
    with open(path) as f:
        return f.read()


def is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def depends_names(depends):
    """Package names in a Depends value (alternatives flattened, versions dropped)."""
    names = set()
    for clause in depends.split(","):
        for alt in clause.split("|"):
            alt = alt.strip()
            if alt:
                names.add(re.split(r"[\s(:]", alt, maxsplit=1)[0])
    return names


def owners_of_soname(soname):
    """Installed packages shipping a file named soname in a library directory."""
    r = run(["dpkg-query", "-S", f"*/{soname}"], check=False)
    owners = set()
    for line in r.stdout.splitlines():
        pkgs, _, path = line.partition(": ")
        if os.path.basename(path.strip()) == soname and "/lib" in path:
            owners |= {p.strip().split(":")[0] for p in pkgs.split(",")}
    return owners


def built_client_files(build):
    """What clients/ produced in this build: {'cli': bool, 'lib': bool}."""
    found = {"cli": False, "lib": False}
    for path in glob.glob(os.path.join(build, "**", "*herald*"), recursive=True):
        if "CMakeFiles" in path or "_CPack_Packages" in path or "/packaging/" in path:
            continue
        name = os.path.basename(path)
        if name == "herald" and os.path.isfile(path) and is_elf(path):
            found["cli"] = True
        if re.match(r"^libherald\.so(\.\d+)*$", name):
            found["lib"] = True
    return found


class DebTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.build = os.path.abspath(build_dir())
        cpack = need("cpack", "cmake")
        need("dpkg-deb", "dpkg")
        need("dpkg-shlibdeps", "dpkg-dev")
        need("file", "file")  # CPack's shlibdeps step uses it to find ELF files
        if not os.path.exists(os.path.join(cls.build, "CPackConfig.cmake")):
            raise AssertionError(f"{cls.build} has no CPackConfig.cmake: the top-level "
                                 f"CMakeLists.txt must include(cmake/Packaging.cmake)")
        cls.tmp = tempfile.mkdtemp(prefix="herald-deb-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        out = os.path.join(cls.tmp, "out")
        r = run([cpack, "-G", "DEB", "-B", out, "--config",
                 os.path.join(cls.build, "CPackConfig.cmake")], timeout=600, cwd=cls.build)
        # The staging tree is a full copy of the install; only the .deb is kept.
        shutil.rmtree(os.path.join(out, "_CPack_Packages"), ignore_errors=True)
        debs = glob.glob(os.path.join(out, "*.deb"))
        if len(debs) != 1:
            raise AssertionError(f"cpack made {debs}:\n{r.stdout}\n{r.stderr}")
        cls.deb = debs[0]
        cls.fields = cls.control_fields()
        cls.entries = cls.data_entries()
        cls.root = os.path.join(cls.tmp, "extracted")
        run(["dpkg-deb", "-x", cls.deb, cls.root])
        cls.control = os.path.join(cls.tmp, "control")
        run(["dpkg-deb", "-e", cls.deb, cls.control])
        cls.clients = built_client_files(cls.build)

    @classmethod
    def control_fields(cls):
        text = run(["dpkg-deb", "-f", cls.deb]).stdout
        fields, key = {}, None
        for line in text.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line[1:]
            else:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        return fields

    @classmethod
    def data_entries(cls):
        """{"/path": (mode string, owner, link target or None)} from dpkg-deb -c."""
        entries = {}
        for line in run(["dpkg-deb", "-c", cls.deb]).stdout.splitlines():
            parts = line.split(None, 5)
            mode, owner, name = parts[0], parts[1], parts[5]
            target = None
            if " -> " in name:
                name, target = name.split(" -> ", 1)
            path = "/" + name.lstrip("./").rstrip("/")
            entries[path] = (mode, owner, target)
        return entries

    def files(self):
        return {p: e for p, e in self.entries.items() if not e[0].startswith("d")}

    # -- control ---------------------------------------------------------------------------

    def test_control_fields(self):
        f = self.fields
        self.assertEqual(f.get("Package"), "herald")
        cache = read(os.path.join(self.build, "CMakeCache.txt"))
        version = re.search(r"^CMAKE_PROJECT_VERSION:\w+=(.*)$", cache, re.M).group(1)
        self.assertEqual(f.get("Version"), version)
        arch = run(["dpkg", "--print-architecture"]).stdout.strip()
        self.assertEqual(f.get("Architecture"), arch)
        self.assertEqual(f.get("Section"), "net")
        self.assertRegex(f.get("Maintainer", ""), r"^[^<>]+ <[^<>@\s]+@[^<>\s]+>$")
        desc = f.get("Description", "").split("\n")
        self.assertTrue(desc[0] and len(desc[0]) <= 80, f"bad synopsis {desc[0]!r}")
        self.assertGreater(len(desc), 1, "no extended description")

    def test_depends_cover_every_loaded_library(self):
        depends = self.fields.get("Depends", "")
        names = depends_names(depends)
        # Runtime package names differ by release (libuv1 on Debian 12, libuv1t64 on 13):
        # the one that ships each library on this machine must be named.
        for soname in ("libc.so.6", "libuv.so.1", "libjansson.so.4", "libsystemd.so.0"):
            owners = owners_of_soname(soname)
            self.assertTrue(owners, f"no installed package ships {soname}")
            self.assertTrue(owners & names, f"none of {sorted(owners)} in Depends: {depends}")
        self.assertIn("libwebsockets-evlib-uv", names, f"Depends: {depends}")
        self.assertTrue(any(re.match(r"^libwebsockets\d+(t64)?$", n) for n in names),
                        f"no libwebsockets runtime in Depends: {depends}")
        own_sonames = {os.path.basename(p) for p in self.files() if ".so" in p}
        missing = []
        for path in self.files():
            local = os.path.join(self.root, path.lstrip("/"))
            if not is_elf(local):
                continue
            dyn = run(["readelf", "-d", local]).stdout
            for soname in re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dyn):
                if soname in own_sonames:
                    continue
                owners = owners_of_soname(soname)
                if not owners & names:
                    missing.append(f"{path} needs {soname} (from {sorted(owners) or '?'})")
        self.assertEqual(missing, [], f"Depends: {depends}")

    def test_depends_are_installable_here(self):
        # This machine runs heraldd, so every dependency (name and version) must hold here.
        need("dpkg-checkbuilddeps", "dpkg-dev")
        r = run(["dpkg-checkbuilddeps", "-d", self.fields["Depends"], "/dev/null"], check=False)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_conffile_and_maintainer_scripts(self):
        with open(os.path.join(self.control, "conffiles")) as f:
            self.assertEqual(f.read().split(), [CONFIG])
        for name in ("postinst", "prerm", "postrm"):
            path = os.path.join(self.control, name)
            self.assertTrue(os.path.exists(path), f"no {name}")
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o755, name)
            run(["sh", "-n", path])
        if self.clients["lib"]:
            with open(os.path.join(self.control, "triggers")) as f:
                self.assertIn("activate-noawait ldconfig", f.read())
            self.assertTrue(os.path.exists(os.path.join(self.control, "shlibs")))

    # -- data ------------------------------------------------------------------------------

    def test_file_list(self):
        files = self.files()
        want = {
            "/usr/bin/heraldd": "-rwxr-xr-x",
            UNIT: "-rw-r--r--",
            "/usr/lib/systemd/system/heraldd.socket": "-rw-r--r--",
            CONFIG: "-rw-r--r--",
            "/usr/share/doc/herald/copyright": "-rw-r--r--",
        }
        for path, mode in want.items():
            self.assertIn(path, files, f"{path} missing; package has {sorted(files)}")
            self.assertEqual(files[path][0], mode, path)
        for path, (mode, owner, _) in self.entries.items():
            self.assertEqual(owner, "root/root", path)
            self.assertFalse(path.startswith("/usr/local") or path.startswith("/usr/sbin"),
                             f"{path}: packages install into /usr (heraldd in /usr/bin)")
            self.assertNotIn(self.build, path)
            allowed = ("/etc/herald", "/usr/bin/", "/usr/lib/", "/usr/include/",
                       "/usr/share/doc/herald/", "/usr/share/man/")
            if not mode.startswith("d"):
                self.assertTrue(path.startswith(allowed), f"unexpected file {path}")
        if self.clients["cli"]:
            self.assertIn("/usr/bin/herald", files)
        if self.clients["lib"]:
            libs = [p for p in files if re.search(r"/libherald\.so\.\d+", p)]
            self.assertTrue(libs, f"libherald.so.N missing from {sorted(files)}")
            self.assertTrue([p for p in files if p.endswith("/libherald.so")],
                            "libherald.so (for linking) missing")
            self.assertTrue([p for p in files if p.startswith("/usr/include/") and
                             p.endswith(".h")], "no libherald header")
            self.assertTrue([p for p in files if re.search(r"/pkgconfig/[^/]*herald[^/]*\.pc$", p)],
                            "no libherald .pc file")

    def test_pkg_config_files_point_into_usr(self):
        for path in self.files():
            if not path.endswith(".pc"):
                continue
            with open(os.path.join(self.root, path.lstrip("/"))) as f:
                text = f.read()
            m = re.search(r"^prefix=(.*)$", text, re.M)
            self.assertIsNotNone(m, f"{path} has no prefix=")
            prefix = m.group(1).strip()
            self.assertTrue(prefix == "/usr" or prefix.startswith("${pcfiledir}"),
                            f"{path} says prefix={prefix}: the package installs into /usr")

    def test_packaged_unit_runs_the_packaged_binary(self):
        packaged = read(os.path.join(self.root, UNIT.lstrip("/")))
        self.assertEqual(packaged, read(os.path.join(REPO, "systemd", "heraldd.service")),
                         "the packaged unit differs from systemd/")
        execs = re.findall(r"^ExecStart=(\S+)", packaged, re.M)
        self.assertEqual(execs, ["/usr/bin/heraldd"])
        self.assertIn(re.search(r"-c (\S+)", packaged).group(1), [CONFIG])

    def test_packaged_heraldd_accepts_the_packaged_config(self):
        conf = os.path.join(self.root, CONFIG.lstrip("/"))
        heraldd = os.path.join(self.root, "usr/bin/heraldd")
        # --check-config checks that data_dir exists: systemd makes the unit's
        # StateDirectory, so an existing directory stands in for it.
        data = tempfile.mkdtemp(prefix="herald-deb-")
        self.addCleanup(os.rmdir, data)
        r = run([heraldd, "--check-config", "-c", conf, "--data-dir", data], check=False,
                timeout=30)
        self.assertEqual(r.returncode, 0, f"{r.stdout}{r.stderr}")
        with open(conf) as f:
            cfg = json.load(f)
        # The production default: sqlite history in the unit's StateDirectory, loopback only.
        self.assertEqual(cfg["history"]["store"], "sqlite")
        unit = read(os.path.join(self.root, UNIT.lstrip("/")))
        state = re.search(r"^StateDirectory=(\S+)", unit, re.M).group(1)
        self.assertEqual(cfg["data_dir"], f"/var/lib/{state}")
        self.assertEqual([(x["address"], x["port"]) for x in cfg["listen"]],
                         [("127.0.0.1", 7070)])

    # -- dpkg ------------------------------------------------------------------------------

    def dpkg(self, root, *args, check=True):
        return run(["dpkg", f"--root={root}", "--log=/dev/null", "--force-script-chrootless",
                    "--force-depends"] + list(args), check=check)

    def test_dpkg_install_reinstall_remove_purge(self):
        if os.geteuid() != 0:
            self.skipTest("dpkg installs files owned by root")
        root = os.path.join(self.tmp, "root")
        for d in ("var/lib/dpkg/updates", "var/lib/dpkg/info", "var/lib/dpkg/triggers"):
            os.makedirs(os.path.join(root, d))
        open(os.path.join(root, "var/lib/dpkg/status"), "w").close()
        # Maintainer scripts run on this host with DPKG_ROOT set: they must not touch it.
        self.dpkg(root, "-i", self.deb)
        for path, (mode, _, target) in self.files().items():
            local = os.path.join(root, path.lstrip("/"))
            self.assertTrue(os.path.lexists(local), f"{path} not installed")
            if target is None:
                self.assertEqual(stat.filemode(os.stat(local).st_mode), mode, path)
        status = run(["dpkg", f"--root={root}", "-s", "herald"]).stdout
        self.assertIn("Status: install ok installed", status)
        self.assertRegex(status, r"Conffiles:\n " + re.escape(CONFIG) + r" [0-9a-f]{32}")

        conf = os.path.join(root, CONFIG.lstrip("/"))
        with open(conf, "a") as f:
            f.write("\n")  # the admin's edit
        edited = read(conf)
        self.dpkg(root, "-i", self.deb)
        self.assertEqual(read(conf), edited, "reinstalling replaced an edited conffile")

        state = os.path.join(root, "var/lib/private/herald")
        os.makedirs(state)
        open(os.path.join(state, "history.db"), "w").close()
        os.symlink("private/herald", os.path.join(root, "var/lib/herald"))
        self.dpkg(root, "-r", "herald")
        left = [p for p in self.files() if os.path.lexists(os.path.join(root, p.lstrip("/")))]
        self.assertEqual(left, [CONFIG], "remove must keep only the conffile")
        self.assertTrue(os.path.exists(os.path.join(state, "history.db")),
                        "remove must keep the history")
        self.dpkg(root, "-P", "herald")
        leftovers = []
        for dirpath, dirnames, filenames in os.walk(root):
            if dirpath.startswith(os.path.join(root, "var/lib/dpkg")):
                continue
            leftovers += [os.path.join(dirpath, n) for n in filenames]
            leftovers += [os.path.join(dirpath, n) for n in dirnames
                          if os.path.islink(os.path.join(dirpath, n))]
        self.assertEqual(leftovers, [], "purge left files behind")
        self.assertFalse(os.path.exists(os.path.join(root, "etc/herald")))


if __name__ == "__main__":
    unittest.main()
