"""`make compose-test`: docker-compose.yml started for real and tested from this machine.

1. The engine: Docker when `docker compose` is there and a Docker daemon answers; otherwise
   rootful podman with podman-compose (the Debian packages are installed with apt-get when
   missing and this runs as root; podman-compose with pip into this virtual environment).
   COMPOSE_ENGINE=podman or =docker chooses.
2. Without either, it says what is missing and fails (exit 2): a missing tool is never a skip.
3. Then pytest runs tests/compose/check_compose.py, which builds the images, brings the cluster
   up, checks it through the published nginx port on 127.0.0.1 and takes it down again.

Extra arguments are passed to pytest.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from engine import PODMAN_PACKAGES  # noqa: E402

# iptables: netavark publishes ports with it; netavark and aardvark-dns: the network stack and
# the DNS that resolves service names (podman only recommends them)
APT_PACKAGES = [*PODMAN_PACKAGES, "netavark", "aardvark-dns", "iptables"]
PODMAN_COMPOSE = "podman-compose>=1.6,<2"
TOTAL_LIMIT = 1500  # seconds for builds, checks and clean-up together (a run takes 3 to 6 min)


def say(msg: str) -> None:
    print(f"[compose-test] {msg}", flush=True)


def answers(cmd: list[str], timeout: float = 20) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def docker_ready() -> tuple[bool, str]:
    if not shutil.which("docker"):
        return False, "no docker command"
    if not answers(["docker", "compose", "version"]):
        return False, "docker is there but not the compose plugin (`docker compose version` fails)"
    if not answers(["docker", "info"]):
        return False, "docker compose is there but no Docker daemon answers (`docker info` fails)"
    return True, "docker compose and a daemon"


def missing_packages() -> list[str]:
    missing = []
    for p in APT_PACKAGES:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                           text=True)
        if "install ok installed" not in r.stdout:
            missing.append(p)
    return missing


def ensure_podman() -> str | None:
    """None when podman is ready, else what is missing (in words)."""
    if os.geteuid() != 0:
        return ("the podman route runs rootful podman and needs root (or use Docker: "
                "`docker compose` with a running daemon)")
    if not shutil.which("dpkg-query"):
        if shutil.which("podman") and shutil.which("debootstrap"):
            return None
        return ("podman and debootstrap are missing and this is no Debian/Ubuntu system to "
                "install them with apt-get; install Docker (with compose) or podman")
    missing = missing_packages()
    if missing:
        if not shutil.which("apt-get"):
            return f"missing Debian packages: {' '.join(missing)} (and no apt-get)"
        say(f"installing with apt-get: {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
            subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                           timeout=600, stdout=subprocess.DEVNULL)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            return f"apt-get could not install {' '.join(missing)}: {exc}"
    if not (Path(sys.executable).parent / "podman-compose").exists():
        say(f"installing {PODMAN_COMPOSE} into {Path(sys.prefix)}")
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                            "--disable-pip-version-check", PODMAN_COMPOSE], timeout=300)
        if r.returncode != 0:
            return f"pip could not install {PODMAN_COMPOSE}"
    return None


def main() -> int:
    wanted = os.environ.get("COMPOSE_ENGINE", "").strip().lower()
    if wanted not in ("", "podman", "docker"):
        say(f"COMPOSE_ENGINE={wanted!r}: use podman or docker")
        return 2
    ok, why = docker_ready()
    if wanted == "docker" or (not wanted and ok):
        if not ok:
            say(f"COMPOSE_ENGINE=docker, but {why}")
            return 2
        engine = "docker"
    else:
        problem = ensure_podman()
        if problem:
            say("cannot run the compose test: neither Docker nor podman is usable here.\n"
                f"  Docker: {why}.\n"
                f"  podman: {problem}.\n"
                "  Needed: Docker with the compose plugin and a running daemon, or (as root on "
                f"Debian) apt-get install {' '.join(APT_PACKAGES)}, "
                f"and pip install '{PODMAN_COMPOSE}'.")
            return 2
        engine = "podman"
    say(f"engine: {engine}" + (f" ({why})" if engine == "docker" else ""))
    env = {**os.environ, "COMPOSE_ENGINE": engine}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s", "-q",
           # each check has its own time limit; the fixture's builds and `up` are bounded
           # command by command (tests/compose/engine.py), not by a check's limit
           "-o", "timeout_func_only=true", str(HERE / "check_compose.py"), *sys.argv[1:]]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        return proc.wait(timeout=TOTAL_LIMIT)
    except subprocess.TimeoutExpired:
        # ^C for pytest: its fixtures still take the cluster down and remove the images
        say(f"still running after {TOTAL_LIMIT} s: interrupting")
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return 1


if __name__ == "__main__":
    sys.exit(main())
