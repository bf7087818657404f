"""deploy/: Dockerfile, compose stack, Kubernetes manifests, Grafana/Prometheus/collector configs.

No container engine runs here, so the files are read and checked against the code they deploy: ports,
probe paths and the command come from the gateway and the policies, not from constants in this test.
(The commands the files run are run for real in tests/integration/test_deploy_run.py.)
"""

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.app import create_admin_app, create_app
from gateway.cli import main as escalade_main
from gateway.routes import health
from gateway.server import is_loopback, load_state, parse_listen
from local_engine.command import build_argv
from policies.loader import parse_policy
from policies.schema import Policy
from providers.openai_compat.config import VllmConf
from tests.support.deploy_files import (
    Stage,
    copy_parts,
    dockerignore_rules,
    exec_form,
    healthcheck_command,
    in_build_context,
    interpolate,
    is_reference,
    parse_dockerfile,
    parse_promql,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "escalade.json"

# The metrics the gateway exports (shared contract with the telemetry work): name -> (type, labels).
METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "escalade_requests_total": ("counter", frozenset({"route", "model", "code"})),
    "escalade_request_errors_total": ("counter", frozenset({"route", "error_type"})),
    "escalade_request_duration_seconds": ("histogram", frozenset({"route", "model", "stream"})),
    "escalade_ttft_seconds": ("histogram", frozenset({"route", "model"})),
    "escalade_tokens_total": ("counter", frozenset({"route", "model", "direction"})),
    "escalade_cost_usd_total": ("counter", frozenset({"route", "model"})),
    "escalade_upstream_attempts_total": ("counter", frozenset({"route", "model", "outcome"})),
    "escalade_retries_total": ("counter", frozenset({"route", "model", "reason"})),
    "escalade_escalations_total": ("counter", frozenset({"route", "from_rung", "reason"})),
    "escalade_gate_decisions_total": ("counter", frozenset({"route", "rung", "result"})),
    "escalade_circuit_state": ("gauge", frozenset({"model"})),
    "escalade_engine_queue_depth": ("gauge", frozenset({"engine"})),
    "escalade_engine_running_requests": ("gauge", frozenset({"engine"})),
    "escalade_state_backend_healthy": ("gauge", frozenset({"backend"})),
}
SECRET_NAME = re.compile(r"KEY|TOKEN|PASSWORD|SECRET|REDIS_URL", re.I)


def load_yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def policy_of(path: Path) -> Policy:
    return parse_policy(path.read_bytes(), str(path))


def secret_envs(policy: Policy) -> set[str]:
    """Environment variables that hold secrets the policy needs: provider keys, admin token, Redis URL."""
    names = {conf.api_key_env for conf in policy.providers.values() if conf.api_key_env}
    if policy.server.admin_token_env:
        names.add(policy.server.admin_token_env)
    if policy.state.backend == "redis":
        names.add(policy.state.redis_url_env)
    return names


def listen_ports(policy: Policy) -> tuple[int, int | None]:
    admin = parse_listen(policy.server.admin_listen)[1] if policy.server.admin_listen else None
    return parse_listen(policy.server.listen)[1], admin


def served_paths(policy_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[set[str], set[str]]:
    """GET paths of the client app and of the admin app, built by the gateway itself from this policy."""
    policy = policy_of(policy_path)
    for name in secret_envs(policy):
        monkeypatch.setenv(name, "test-value")
    state = load_state(policy_path, parse_listen(policy.server.listen)[0])
    return {r.path for r in create_app(state).routes}, {r.path for r in create_admin_app(state).routes}


def check_policy(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """`escalade check PATH`, in process; returns its report."""
    code = escalade_main(["check", str(path)])
    out = capsys.readouterr()
    assert code == 0, f"escalade check {path}:\n{out.err}"
    return out.out


def protected_when_exposed(policy: Policy) -> None:
    """The rules gateway/server.py and gateway/auth.py apply to listeners that are not loopback."""
    host = parse_listen(policy.server.listen)[0]
    if not is_loopback(host):
        assert policy.keys, "a non-loopback API listener with no keys answers every request with 401"
    if policy.server.admin_listen and not is_loopback(parse_listen(policy.server.admin_listen)[0]):
        assert policy.server.admin_token_env, "a non-loopback admin listener needs server.admin_token_env"


# ---------------------------------------------------------------- every file parses; every policy checks


def test_every_yaml_and_json_file_in_deploy_parses() -> None:
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml", ".json"})
    assert len(files) >= 10
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            assert load_yaml_docs(path), f"{path} is empty"


def embedded_policies(tmp_path: Path) -> list[Path]:
    """Policies inside Kubernetes ConfigMaps, written out as files."""
    out = []
    for manifest in sorted(K8S.glob("*.yaml")):
        for doc in load_yaml_docs(manifest):
            if doc.get("kind") == "ConfigMap" and "policy.yaml" in doc.get("data", {}):
                path = tmp_path / f"{manifest.stem}-{doc['metadata']['name']}.yaml"
                path.write_text(doc["data"]["policy.yaml"])
                out.append(path)
    return out


def test_escalade_check_passes_on_every_deploy_policy_and_the_configmap_policy(tmp_path, capsys) -> None:
    # tests/unit/test_policy_loader.py parses every deploy/policies/*.yaml; this runs the command an
    # operator runs, which also builds each engine's command line, and covers the ConfigMap's policy.
    policies = sorted((DEPLOY / "policies").glob("*.yaml")) + embedded_policies(tmp_path)
    assert any("policy-configmap" in p.name for p in policies)
    for path in policies:
        assert ": OK" in check_policy(path, capsys)


# ---------------------------------------------------------------- Dockerfile


def dockerfile() -> list[Stage]:
    return parse_dockerfile((DEPLOY / "Dockerfile").read_text())


def image_command(stage: Stage) -> list[str]:
    entrypoint = stage.last("ENTRYPOINT")
    cmd = stage.last("CMD")
    assert entrypoint is not None and cmd is not None
    return exec_form(entrypoint.value) + exec_form(cmd.value)


def policy_path_in_image(stage: Stage, command: list[str]) -> tuple[str, Path]:
    """The --policy path in the image and the repository file COPY puts there."""
    inside = command[command.index("--policy") + 1]
    for instruction in stage.all("COPY"):
        flags, sources, dest = copy_parts(instruction.value)
        if dest == inside and "from" not in flags:
            [source] = sources
            return inside, ROOT / source
    raise AssertionError(f"nothing in the final stage is copied to {inside}")


def test_the_image_runs_escalade_serve_with_the_policy_it_ships() -> None:
    final = dockerfile()[-1]
    command = image_command(final)
    assert command[:2] == ["escalade", "serve"]
    assert PYPROJECT["project"]["scripts"]["escalade"] == "gateway.cli:main"
    venv_bin = final.env()["PATH"].split(":")[0]
    builds = " ".join(i.value for s in dockerfile()[:-1] for i in s.all("RUN"))
    assert f"python -m venv {venv_bin.removesuffix('/bin')}" in builds, "escalade is installed in the venv on PATH"
    inside, source = policy_path_in_image(final, command)
    assert inside == "/etc/escalade/policy.yaml" and source.is_file()


def test_the_image_is_slim_non_root_and_has_no_compiler() -> None:
    stages = dockerfile()
    final = stages[-1]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", final.base), final.base
    user = final.last("USER")
    assert user is not None and user.line == max(i.line for i in final.instructions if i.keyword in {"USER", "RUN"})
    uid = user.value.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root uid (Kubernetes' runAsNonRoot can only verify a number)"
    assert any(f"--uid {uid}" in run.value for run in final.all("RUN")), "the user exists in /etc/passwd"
    final_runs = " ".join(run.value for run in final.all("RUN"))
    assert not re.search(r"\b(gcc|g\+\+|clang|build-essential|make|apt-get install|apk add|pip install)\b", final_runs)
    copied_from_build = [copy_parts(c.value) for c in final.all("COPY") if "from" in copy_parts(c.value)[0]]
    assert copied_from_build and all(flags["from"] == stages[0].name for flags, _, _ in copied_from_build)
    env = final.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"


def test_expose_and_healthcheck_match_the_shipped_policy_and_the_gateway(monkeypatch) -> None:
    final = dockerfile()[-1]
    _, source = policy_path_in_image(final, image_command(final))
    policy = policy_of(source)
    protected_when_exposed(policy)
    assert parse_listen(policy.server.listen)[0] == "0.0.0.0", "in a container the API must listen on every interface"
    exposed = {int(p.split("/")[0]) for e in final.all("EXPOSE") for p in e.value.split()}
    assert exposed == set(listen_ports(policy)) - {None}
    healthcheck = final.last("HEALTHCHECK")
    assert healthcheck is not None
    url = re.search(r"https?://[^'\"\s]+", " ".join(healthcheck_command(healthcheck.value)))
    assert url is not None
    target = urlsplit(url.group(0))
    client_paths, _ = served_paths(source, monkeypatch)
    assert target.port == listen_ports(policy)[0] and is_loopback(target.hostname or "")
    assert target.path in client_paths and target.path in health.healthz.paths


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_secret() -> None:
    rules = dockerignore_rules((ROOT / ".dockerignore").read_text())
    sources = []
    for stage in dockerfile():
        for instruction in stage.all("COPY"):
            flags, srcs, _ = copy_parts(instruction.value)
            if "from" not in flags:
                sources += srcs
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= {s.strip("/") for s in sources}, "every package the wheel includes is copied"
    assert {"pyproject.toml", PYPROJECT["project"]["readme"]} <= set(sources)
    for source in sources:
        path = ROOT / source
        assert path.exists(), source
        files = (
            [path]
            if path.is_file()
            else [  # not build products of this checkout (bytecode, the compiled span encoder)
                f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".so"
            ]
        )
        for f in files:
            assert in_build_context(str(f.relative_to(ROOT)), rules), f"{f} is excluded by .dockerignore"
    for kept_out in (
        ".git/config",
        "tests/conftest.py",
        ".env",
        "deploy/.env",
        "gateway/__pycache__/app.cpython-311.pyc",
    ):
        assert not in_build_context(kept_out, rules), kept_out


# ---------------------------------------------------------------- compose


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def compose_policy(service: dict[str, Any]) -> tuple[list[str], Path]:
    """The gateway service's command (image ENTRYPOINT + compose command) and the host file it serves."""
    final = dockerfile()[-1]
    entrypoint = service.get("entrypoint") or exec_form(final.last("ENTRYPOINT").value)  # type: ignore[union-attr]
    command = entrypoint + (service.get("command") or exec_form(final.last("CMD").value))  # type: ignore[union-attr]
    inside = command[command.index("--policy") + 1]
    for volume in service.get("volumes", []):
        host, target = volume.split(":")[:2]
        if inside.startswith(target.rstrip("/") + "/") or inside == target:
            return command, (DEPLOY / host / inside[len(target) :].lstrip("/")).resolve()
    raise AssertionError(f"{inside} is not mounted into the gateway container")


def gateway_service(services: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    [(name, service)] = [(n, s) for n, s in services.items() if "build" in s]
    return name, service


def test_compose_builds_this_dockerfile_and_serves_the_compose_policy(capsys) -> None:
    services = compose()["services"]
    _, gw = gateway_service(services)
    assert (DEPLOY / gw["build"]["context"] / gw["build"]["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()
    assert gw["image"] == f"escalade:{PYPROJECT['project']['version']}"
    command, policy_file = compose_policy(gw)
    assert command[:2] == ["escalade", "serve"]
    assert policy_file == DEPLOY / "policies" / "compose.yaml"
    check_policy(policy_file, capsys)
    policy = policy_of(policy_file)
    protected_when_exposed(policy)
    published = {int(str(p).rsplit(":", 1)[1]) for p in gw["ports"]}
    assert published == set(listen_ports(policy)) - {None}
    admin_published = [str(p) for p in gw["ports"] if int(str(p).rsplit(":", 1)[1]) == listen_ports(policy)[1]]
    assert all(p.startswith("127.0.0.1:") for p in admin_published), "the admin port is published on loopback only"
    assert gw["read_only"] is True and "ALL" in gw["cap_drop"]


def test_compose_passes_every_secret_the_policy_names_as_a_reference() -> None:
    services = compose()["services"]
    _, gw = gateway_service(services)
    policy = policy_of(compose_policy(gw)[1])
    env = gw["environment"]
    assert secret_envs(policy) <= set(env)
    for name, value in env.items():
        if SECRET_NAME.search(name) and name != policy.state.redis_url_env:
            assert is_reference(str(value)), f"{name} must be a ${{VAR}} reference, not a value"
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) and key != "REDIS_URL":
                assert is_reference(str(value)), f"{name}.{key} must be a ${{VAR}} reference"


def test_compose_redis_and_collector_are_where_the_gateway_looks() -> None:
    services = compose()["services"]
    _, gw = gateway_service(services)
    policy = policy_of(compose_policy(gw)[1])
    assert policy.state.backend == "redis"
    redis_url = urlsplit(gw["environment"][policy.state.redis_url_env])
    assert redis_url.scheme == "redis" and services[redis_url.hostname]["image"].startswith("redis:")
    assert "redis" in {k for k in gw["depends_on"]}
    otlp = urlsplit(gw["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
    collector = services[otlp.hostname]
    assert collector["image"].startswith("otel/opentelemetry-collector-contrib:")
    # gateway/telemetry.py exports OTLP over HTTP (the SDK's OTLP/HTTP exporter, with escalade's span encoder):
    # the endpoint must be the collector's http receiver.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from gateway.otlp import FastOTLPSpanExporter

    assert issubclass(FastOTLPSpanExporter, OTLPSpanExporter)
    assert "FastOTLPSpanExporter()" in (ROOT / "gateway" / "telemetry.py").read_text()
    config_path = collector["command"][0].split("=", 1)[1]
    [config_mount] = [v for v in collector["volumes"] if v.split(":")[1] == config_path]
    config = yaml.safe_load((DEPLOY / config_mount.split(":")[0]).read_text())
    http = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert int(http.rsplit(":", 1)[1]) == otlp.port
    traces = config["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        assert set(traces[kind]) <= set(config[kind]), kind
    [jaeger_exporter] = [config["exporters"][e] for e in traces["exporters"] if e.startswith("otlp")]
    assert services[jaeger_exporter["endpoint"].split(":")[0]]["image"].startswith("jaegertracing/")


def engine_of(path: Path) -> tuple[str, VllmConf]:
    [(name, conf)] = [(n, c) for n, c in policy_of(path).providers.items() if isinstance(c, VllmConf) and c.engine]
    return name, conf


def local_provider(policy: Policy) -> tuple[VllmConf, str]:
    """The policy's vLLM provider (an external engine: no engine: block) and its served model name."""
    [(name, conf)] = [(n, c) for n, c in policy.providers.items() if isinstance(c, VllmConf)]
    assert conf.engine is None, "in containers vLLM runs in its own image, not launched by the gateway"
    [model] = {m.model for m in policy.models.values() if m.provider == name}
    return conf, model


def expected_vllm_argv(policy: Policy) -> tuple[list[str], str, int]:
    """The command escalade would run for mistral-small-4.yaml's engine, listening on every interface
    at the port the deployment's policy reaches it on; plus that host name and port."""
    conf, served = local_provider(policy)
    address = urlsplit(conf.base_url or "")
    _, production = engine_of(DEPLOY / "policies" / "mistral-small-4.yaml")
    assert production.engine is not None and production.engine.served_model_name == served
    argv = build_argv(production.engine, f"http://0.0.0.0:{address.port}/v1")
    return argv, address.hostname or "", address.port or 80


def test_compose_vllm_runs_the_production_engine_command_where_the_policy_points() -> None:
    services = compose()["services"]
    _, gw = gateway_service(services)
    argv, host, port = expected_vllm_argv(policy_of(compose_policy(gw)[1]))
    vllm = services[host]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    assert vllm["entrypoint"] + vllm["command"] == argv
    _, production = engine_of(DEPLOY / "policies" / "mistral-small-4.yaml")
    assert production.engine is not None
    assert production.engine.env.items() <= {k: str(v) for k, v in vllm["environment"].items()}.items()
    [gpus] = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert gpus["driver"] == "nvidia" and "gpu" in gpus["capabilities"]
    assert f"http://127.0.0.1:{port}/health" in " ".join(vllm["healthcheck"]["test"])
    assert "ports" not in vllm, "vLLM has no auth: it stays on the compose network"


def test_compose_prometheus_scrapes_the_admin_listener_with_the_admin_token(monkeypatch) -> None:
    doc = compose()
    services = doc["services"]
    gw_name, gw = gateway_service(services)
    policy_file = compose_policy(gw)[1]
    policy = policy_of(policy_file)
    prom = services["prometheus"]
    config_path = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    [mount] = [v for v in prom["volumes"] if v.split(":")[1] == config_path]
    config = yaml.safe_load((DEPLOY / mount.split(":")[0]).read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "escalade"]
    [target] = [t for group in job["static_configs"] for t in group["targets"]]
    assert target == f"{gw_name}:{listen_ports(policy)[1]}"
    client_paths, admin_paths = served_paths(policy_file, monkeypatch)
    # /metrics is served on the admin listener once the telemetry work lands (then this also holds:
    # assert job["metrics_path"] in admin_paths); it must never be on the client listener.
    assert job["metrics_path"] == "/metrics" and job["metrics_path"] not in client_paths
    credentials = job["authorization"]["credentials_file"]
    secret = credentials.removeprefix("/run/secrets/")
    assert secret in prom["secrets"]
    assert doc["secrets"][secret]["environment"] == policy.server.admin_token_env
    assert "/admin/policy" in admin_paths


def test_compose_grafana_provisions_the_dashboard_and_the_datasources_it_names() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    mounts = {v.split(":")[1]: DEPLOY / v.split(":")[0] for v in grafana["volumes"] if v.startswith(".")}
    provisioning = mounts["/etc/grafana/provisioning"]
    [datasources] = [load_yaml_docs(p)[0] for p in (provisioning / "datasources").glob("*.yaml")]
    [providers] = [load_yaml_docs(p)[0] for p in (provisioning / "dashboards").glob("*.yaml")]
    [provider] = providers["providers"]
    dashboards_dir = mounts[provider["options"]["path"]]
    assert DASHBOARD.parent.resolve() == dashboards_dir.resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards_dir / Path(home).relative_to(provider["options"]["path"])).is_file()
    by_uid = {d["uid"]: d for d in datasources["datasources"]}
    prometheus = by_uid["prometheus"]
    url = urlsplit(prometheus["url"])
    assert url.hostname in services and services[url.hostname]["image"].startswith("prom/prometheus:")
    jaeger = urlsplit(by_uid["jaeger"]["url"])
    assert services[jaeger.hostname]["image"].startswith("jaegertracing/")
    dashboard = json.loads(DASHBOARD.read_text())
    [ds_var] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert ds_var["query"] == prometheus["type"] and ds_var["current"]["value"] == prometheus["uid"]


def test_every_compose_file_mount_and_dependency_exists() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
        depends = service.get("depends_on", [])
        assert set(depends) <= set(services), name


# ---------------------------------------------------------------- Kubernetes


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = {}
    for resource in kustomization["resources"]:
        for doc in load_yaml_docs(K8S / resource):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def container(obj: dict[str, Any]) -> dict[str, Any]:
    [c] = obj["spec"]["template"]["spec"]["containers"]
    return c


def effective_image(image: str) -> str:
    """The image after the kustomization's `images:` override."""
    name, _, tag = image.partition(":")
    for override in yaml.safe_load((K8S / "kustomization.yaml").read_text()).get("images", []):
        if override["name"] == name:
            return f"{override.get('newName', name)}:{override.get('newTag', tag)}"
    return image


def configmap_policy(objects: dict[tuple[str, str], dict[str, Any]], gw: dict[str, Any], tmp_path: Path) -> Path:
    """The policy the gateway pod reads at the image's --policy path, from the ConfigMap volume."""
    final = dockerfile()[-1]
    inside = image_command(final)[image_command(final).index("--policy") + 1]
    c = container(gw)
    assert "command" not in c and "args" not in c, "the pod runs the image's own command"
    volumes = {v["name"]: v for v in gw["spec"]["template"]["spec"]["volumes"]}
    for mount in c["volumeMounts"]:
        source = volumes[mount["name"]].get("configMap")
        if source and inside.startswith(mount["mountPath"].rstrip("/") + "/"):
            assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates (no hot reload)"
            relative = inside[len(mount["mountPath"]) :].lstrip("/")
            [key] = [i["key"] for i in source["items"] if i["path"] == relative]
            path = tmp_path / "policy.yaml"
            path.write_text(objects[("ConfigMap", source["name"])]["data"][key])
            return path
    raise AssertionError(f"no ConfigMap is mounted at {inside}")


def test_kustomization_lists_every_manifest_and_renders() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    kinds = {kind for kind, _ in k8s_objects()}
    expected = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "StatefulSet"}
    assert expected | {"PersistentVolumeClaim"} <= kinds
    assert "Secret" not in kinds, "secrets are created by the operator, never shipped"
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: rendering with kustomize not checked")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    )
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == set(k8s_objects())
    assert all(d["metadata"].get("namespace") == kustomization["namespace"] for d in docs if d["kind"] != "Namespace")


def test_k8s_gateway_runs_the_image_with_the_configmap_policy(tmp_path, capsys, monkeypatch) -> None:
    objects = k8s_objects()
    gw = objects[("Deployment", "escalade")]
    c = container(gw)
    compose_image = gateway_service(compose()["services"])[1]["image"]
    assert effective_image(c["image"]) == compose_image
    policy_file = configmap_policy(objects, gw, tmp_path)
    check_policy(policy_file, capsys)
    policy = policy_of(policy_file)
    protected_when_exposed(policy)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    client_port, admin_port = listen_ports(policy)
    assert set(ports.values()) == {client_port, admin_port}
    client_paths, _ = served_paths(policy_file, monkeypatch)
    for probe, handler in (("readinessProbe", health.readyz), ("livenessProbe", health.healthz)):
        get = c[probe]["httpGet"]
        assert get["path"] in handler.paths and get["path"] in client_paths, probe
        assert ports[get["port"]] == client_port, probe
    assert c["startupProbe"]["httpGet"]["path"] in health.healthz.paths
    annotations = gw["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == admin_port


def test_k8s_gateway_is_non_root_read_only_with_secrets_by_reference(tmp_path) -> None:
    objects = k8s_objects()
    gw = objects[("Deployment", "escalade")]
    pod = gw["spec"]["template"]["spec"]
    c = container(gw)
    user = dockerfile()[-1].last("USER")
    assert user is not None
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == user.value.split(":")[0]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    policy = policy_of(configmap_policy(objects, gw, tmp_path))
    env = {e["name"]: e for e in c["env"]}
    for name in secret_envs(policy):
        assert set(env[name]) == {"name", "valueFrom"} and "secretKeyRef" in env[name]["valueFrom"], name
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/tmp" in mounts, "a writable /tmp on a read-only root filesystem"


def test_k8s_services_hpa_and_pdb_select_the_gateway_pods() -> None:
    objects = k8s_objects()
    gw = objects[("Deployment", "escalade")]
    labels = gw["spec"]["template"]["metadata"]["labels"]
    assert gw["spec"]["selector"]["matchLabels"].items() <= labels.items()
    names = {p["name"] for p in container(gw)["ports"]}
    gateway_services = [
        o for (k, _), o in objects.items() if k == "Service" and o["spec"]["selector"].items() <= labels.items()
    ]
    assert gateway_services
    assert {p["targetPort"] for s in gateway_services for p in s["spec"]["ports"]} == names
    hpa = objects[("HorizontalPodAutoscaler", "escalade")]
    assert (hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"]) == ("Deployment", "escalade")
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = objects[("PodDisruptionBudget", "escalade")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_k8s_vllm_runs_the_production_engine_command_behind_the_service_the_policy_names(tmp_path) -> None:
    objects = k8s_objects()
    policy = policy_of(configmap_policy(objects, objects[("Deployment", "escalade")], tmp_path))
    argv, host, port = expected_vllm_argv(policy)
    service = objects[("Service", host)]
    [service_port] = service["spec"]["ports"]
    assert service_port["port"] == port
    [deployment] = [
        o
        for (k, _), o in objects.items()
        if k == "Deployment"
        and service["spec"]["selector"].items() <= o["spec"]["template"]["metadata"]["labels"].items()
    ]
    c = container(deployment)
    assert c["image"].startswith("vllm/vllm-openai:")
    assert c["command"] + c["args"] == argv
    assert {p["name"]: p["containerPort"] for p in c["ports"]}[service_port["targetPort"]] == port
    tensor_parallel = int(argv[argv.index("--tensor-parallel-size") + 1])
    assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"] == tensor_parallel
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claims = [v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v]
    assert claims and all(("PersistentVolumeClaim", claim) in objects for claim in claims)
    hf_home = {e["name"]: e.get("value") for e in c["env"]}["HF_HOME"]
    weights_mount = [m for m in c["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]]
    assert any(hf_home.startswith(m["mountPath"]) for m in weights_mount), "the weights land on the volume"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"


def test_k8s_redis_is_persistent_and_its_password_is_a_reference() -> None:
    objects = k8s_objects()
    redis = objects[("StatefulSet", "redis")]
    assert redis["spec"]["volumeClaimTemplates"]
    service = objects[("Service", "redis")]
    assert service["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["port"] == 6379


# ---------------------------------------------------------------- no secret values anywhere in deploy/

LITERAL_SECRETS = [
    re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"),  # OpenAI / Anthropic style keys
    re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"),  # Google API keys
    re.compile(r"\bhf_[A-Za-z0-9]{30,}"),  # Hugging Face tokens
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access keys
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"redis://[^\s:@/]*:[^\s@$<]+@"),  # a Redis URL with a password in it (<placeholder> allowed)
]


def test_no_literal_secret_in_deploy() -> None:
    files = [p for p in DEPLOY.rglob("*") if p.is_file()] + [ROOT / ".dockerignore"]
    for path in files:
        text = path.read_text()
        for pattern in LITERAL_SECRETS:
            assert not pattern.search(text), f"{path}: {pattern.pattern}"
    for manifest in K8S.glob("*.yaml"):
        for doc in load_yaml_docs(manifest):
            for env in _all_env(doc):
                if SECRET_NAME.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), (
                        f"{manifest}: {env['name']}"
                    )


def _all_env(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = list(node.get("env", [])) if isinstance(node.get("env"), list) else []
        return found + [e for v in node.values() for e in _all_env(v)]
    if isinstance(node, list):
        return [e for v in node for e in _all_env(v)]
    return []


def test_the_secret_checks_catch_literals() -> None:
    assert not is_reference("sk-live-1234") and not is_reference("${OPENAI_API_KEY:-sk-fallback}")
    assert is_reference("${OPENAI_API_KEY:?set it}") and is_reference("${HF_TOKEN:-}")
    assert any(p.search("OPENAI_API_KEY: sk-proj-abcdefghijklmnop1234") for p in LITERAL_SECRETS)
    assert any(p.search("redis://:hunter2@redis:6379/0") for p in LITERAL_SECRETS)
    assert not any(p.search("redis://redis:6379/0") for p in LITERAL_SECRETS)
    assert interpolate("${A:-x}/${B}", {"B": "b"}) == "x/b"
    with pytest.raises(KeyError):
        interpolate("${A:?set A}", {})


# ---------------------------------------------------------------- the dashboard


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"]["query"])
            assert m is not None, variable["name"]
            exprs.append(f"max by ({m.group(2)}) ({m.group(1)})")
    return exprs


def family(name: str) -> str:
    """escalade_ttft_seconds_bucket -> escalade_ttft_seconds (histogram series to their metric)."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and METRICS.get(base, ("",))[0] == "histogram":
            return base
    return name


def dashboard_metrics() -> set[str]:
    return {family(s.metric) for expr in dashboard_queries() for s in parse_promql(expr).selectors}


def test_dashboard_queries_name_only_exported_metrics_and_their_labels() -> None:
    for expr in dashboard_queries():
        query = parse_promql(expr)
        assert query.selectors, expr
        for selector in query.selectors:
            name = family(selector.metric)
            assert name in METRICS, f"{selector.metric} is not an escalade metric: {expr}"
            kind, labels = METRICS[name]
            if kind == "histogram":
                assert selector.metric == f"{name}_bucket" or selector.metric in (f"{name}_sum", f"{name}_count"), expr
            assert selector.labels <= labels, f"{selector.metric} has no label {selector.labels - labels}: {expr}"
            extra = {"le"} if selector.metric.endswith("_bucket") else set()
            assert query.grouping <= labels | extra, f"{selector.metric} cannot be grouped by {query.grouping}: {expr}"


def test_dashboard_covers_traffic_cascade_cost_latency_errors_and_the_local_queue() -> None:
    wanted = {
        "escalade_requests_total",  # traffic by route and model
        "escalade_escalations_total",  # escalation rate
        "escalade_gate_decisions_total",  # gate pass rate
        "escalade_cost_usd_total",  # cost per minute
        "escalade_request_duration_seconds",  # p50/p99 latency
        "escalade_ttft_seconds",  # p50/p99 TTFT
        "escalade_request_errors_total",  # errors
        "escalade_engine_queue_depth",  # local queue depth
    }
    assert wanted <= dashboard_metrics()
    quantiles = set(re.findall(r"histogram_quantile\((0\.\d+)", " ".join(dashboard_queries())))
    assert {"0.5", "0.99"} <= quantiles
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_promql_reader_finds_metrics_labels_and_grouping() -> None:
    q = parse_promql('sum by (le, route) (rate(a_b_bucket{route=~"$route", x!="y"}[$__rate_interval])) / on(route) c')
    assert [(s.metric, s.labels) for s in q.selectors] == [("a_b_bucket", {"route", "x"}), ("c", set())]
    assert q.grouping == {"le", "route"}
    with pytest.raises(ValueError, match="unknown PromQL function"):
        parse_promql("made_up(x)")
