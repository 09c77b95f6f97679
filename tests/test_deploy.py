"""The deployment files, validated offline: no Docker, no cluster, no network.

What each file is checked against:

- ``docker-compose.yml``: the Compose Specification JSON schema, and
  ``.github/workflows/*.yml``: SchemaStore's GitHub workflow schema, both the copies vendored by
  ``check-jsonschema`` 0.37 (``check_jsonschema/builtin_schemas/vendor/compose-spec.json`` and
  ``github-workflows.json``; read from the installed package, never fetched).
- ``deploy/k8s``: Kubernetes' own OpenAPI-derived JSON schemas, strict variant (unknown fields
  are errors), as shipped by ``kubernetes-validate`` 1.37, for the oldest and newest Kubernetes
  versions in ``K8S_VERSIONS``. The overlays are rendered by ``render()`` below, a small subset of
  kustomize (resources, namespace, images, replicas, patches): the real kustomize binary is not
  available here, and a kustomization using anything else fails ``test_kustomizations``.
- The KEDA ScaledObject: the ScaledObject CRD schema vendored unmodified at
  ``tests/fixtures/keda.sh_scaledobjects.yaml``, from kedacore/keda
  ``config/crd/bases/keda.sh_scaledobjects.yaml`` at commit
  756b2de75bd06e913ea34a9fdf7bcf3100a460ba (KEDA 2.x, v1alpha1, controller-gen v0.6.1), made
  strict here (unknown fields rejected, as the API server does with field validation on).
- The Grafana dashboard's PromQL: parsed by ``promql-parser`` (bindings of GreptimeTeam's Rust
  parser); every metric and label must exist in the processors' Prometheus registries.
- Every ``GRAPHWIRE_*`` variable set anywhere must be a field of
  ``graphwire.processors.settings.Settings``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate.utils as kv
import promql_parser
import pytest
from ruamel.yaml import YAML

from graphwire.processors.gateway.models import GatewayMetrics
from graphwire.processors.metrics import AuditMetrics, RunnerMetrics
from graphwire.processors.settings import Settings
from graphwire.processors.webhooks.metrics import WebhookMetrics

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = {"dev": K8S / "overlays" / "dev", "prod": K8S / "overlays" / "prod"}
KUSTOMIZATIONS = {"base": BASE, **OVERLAYS}
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "graphwire.json"
KEDA_CRD = Path(__file__).parent / "fixtures" / "keda.sh_scaledobjects.yaml"
K8S_VERSIONS = ("1.29.0", kv.latest_version() + ".0")

# The processors: Deployment name -> (container, the setting holding its HTTP port, command)
PROCESSORS = {
    "graphwire-runner": ("runner", "http_port", ["worker"]),
    "graphwire-audit": ("audit", "audit_http_port", ["audit"]),
    "graphwire-gateway": ("gateway", "gateway_ops_port", ["gateway"]),
    "graphwire-webhooks": ("webhooks", "webhook_http_port", ["webhooks"]),
    "graphwire-scheduler": ("scheduler", "scheduler_http_port", ["scheduler"]),
}
# processors whose Service exposes an API port besides the health/metrics port (not exposed)
API_PORTS = {"graphwire-gateway": "gateway_port"}
# tests/conftest.py's own variables (the test harness, not graphwire settings)
HARNESS_VARS = {
    "GRAPHWIRE_TEST_BOOTSTRAP", "GRAPHWIRE_TEST_DATABASE_URL", "GRAPHWIRE_TEST_REDIS_URL",
}
# The KEDA Kafka scaler's documented trigger metadata (keda.sh/docs/2.x/scalers/apache-kafka)
KAFKA_SCALER_REQUIRED = {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"}
KAFKA_SCALER_KNOWN = KAFKA_SCALER_REQUIRED | {
    "activationLagThreshold", "offsetResetPolicy", "allowIdleConsumers",
    "scaleToZeroOnInvalidOffset", "excludePersistentLag", "limitToPartitionsWithLag",
    "partitionLimitation", "version", "sasl", "tls",
}
POD_TEMPLATE_KINDS = {"Deployment", "Job", "CronJob"}


# --- loading -------------------------------------------------------------------------------


def _yaml() -> YAML:
    # YAML 1.2 (as Compose and GitHub read it): `on:` is a string, merge keys (<<) resolve
    return YAML(typ="safe", pure=True)


def load_all(path: Path) -> list[Any]:
    return [doc for doc in _yaml().load_all(path.read_text()) if doc is not None]


def load_one(path: Path) -> Any:
    docs = load_all(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, found {len(docs)}"
    return docs[0]


def vendored_schema(name: str) -> dict[str, Any]:
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath(name).read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def schema_errors(schema: dict[str, Any], instance: Any) -> list[str]:
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    ]


def settings_field(env_name: str) -> str:
    assert env_name.startswith("GRAPHWIRE_"), env_name
    return env_name.removeprefix("GRAPHWIRE_").lower()


def settings_default(field: str) -> Any:
    info = Settings.model_fields[field]
    return info.get_default(call_default_factory=True)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_one(ROOT / "docker-compose.yml")
    return data


# --- a small kustomize ---------------------------------------------------------------------

SUPPORTED_KUSTOMIZE_FIELDS = {
    "apiVersion", "kind", "resources", "namespace", "images", "replicas", "patches",
}
BUILTIN_GROUPS = {"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2"}


def _key(doc: dict[str, Any]) -> tuple[str, str, str]:
    return doc["apiVersion"], doc["kind"], doc["metadata"]["name"]


def _merge(dst: Any, src: Any, builtin: bool) -> Any:
    """Strategic merge as kustomize applies it: maps merge, ``null`` deletes; lists of named
    items (containers, env, ports, volumes...) merge by name in built-in kinds, other lists and
    every list of a custom resource are replaced."""
    if isinstance(dst, dict) and isinstance(src, dict):
        out = dict(dst)
        for k, v in src.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = _merge(out[k], v, builtin)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if (
        builtin
        and isinstance(dst, list)
        and isinstance(src, list)
        and all(isinstance(i, dict) and "name" in i for i in dst + src)
    ):
        out_list = [copy.deepcopy(i) for i in dst]
        for item in src:
            same = [n for n, old in enumerate(out_list) if old["name"] == item["name"]]
            if same:
                out_list[same[0]] = _merge(out_list[same[0]], item, builtin)
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(src)


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] in ("Deployment", "Job"):
        spec: dict[str, Any] = doc["spec"]["template"]["spec"]
        return spec
    if doc["kind"] == "CronJob":
        spec = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    return None


def render(directory: Path) -> list[dict[str, Any]]:
    """``kustomize build directory`` for the fields in SUPPORTED_KUSTOMIZE_FIELDS."""
    k = load_one(directory / "kustomization.yaml")
    unsupported = set(k) - SUPPORTED_KUSTOMIZE_FIELDS
    assert not unsupported, f"{directory}: render() does not implement {unsupported}"
    docs: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        docs += render(path) if path.is_dir() else load_all(path)
    for patch_ref in k.get("patches", []):
        assert set(patch_ref) == {"path"}, f"{directory}: only file patches are implemented"
        for patch in load_all(directory / patch_ref["path"]):
            patch = dict(patch)
            delete = patch.pop("$patch", None) == "delete"
            matches = [n for n, d in enumerate(docs) if _key(d) == _key(patch)]
            assert len(matches) == 1, f"{patch_ref['path']} matches {len(matches)} resources"
            if delete:
                del docs[matches[0]]
            else:
                target = docs[matches[0]]
                docs[matches[0]] = _merge(target, patch, target["apiVersion"] in BUILTIN_GROUPS)
    for image in k.get("images", []):
        hits = 0
        for doc in docs:
            spec = pod_spec(doc)
            for container in (spec or {}).get("containers", []):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    hits += 1
                    container["image"] = (
                        f"{image.get('newName', name)}:{image.get('newTag', tag or 'latest')}"
                    )
        assert hits, f"{directory}: images entry {image['name']} matches no container"
    for replicas in k.get("replicas", []):
        targets = [d for d in docs if d["kind"] == "Deployment"
                   and d["metadata"]["name"] == replicas["name"]]
        assert len(targets) == 1, f"{directory}: replicas for unknown {replicas['name']}"
        targets[0]["spec"]["replicas"] = replicas["count"]
    if "namespace" in k:
        for doc in docs:
            doc["metadata"]["namespace"] = k["namespace"]
    return docs


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(path) for name, path in KUSTOMIZATIONS.items()}


def only(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def config_map(docs: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = only(docs, "ConfigMap", "graphwire-config")["data"]
    return data


def container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The literal environment a container gets: ConfigMaps by envFrom, then its own values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        env.update(only(docs, "ConfigMap", ref)["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def setting(docs: list[dict[str, Any]], container: dict[str, Any], field: str) -> str:
    env = container_env(docs, container)
    return env.get(f"GRAPHWIRE_{field.upper()}", str(settings_default(field)))


def strict(schema: Any) -> Any:
    """The schema with unknown fields rejected in every object that lists its fields."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(i) for i in schema]
    return schema


@pytest.fixture(scope="module")
def scaledobject_schema() -> dict[str, Any]:
    crd = load_one(KEDA_CRD)
    assert crd["spec"]["names"]["kind"] == "ScaledObject"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema: dict[str, Any] = strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by the server
    return schema


# --- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_non_root_with_health_check() -> None:
    """The Dockerfile has two ``python:3.11-slim`` stages, the first ``AS build`` building wheels;
    the runtime installs them offline (``--no-index``, ``from=build``) without the dev extra, runs
    as user 10001:10001, checks ``/health`` on GRAPHWIRE_HTTP_PORT (default 8080) with urllib, not
    curl, and ends with ``ENTRYPOINT ["graphwire"]`` and ``CMD ["worker"]``."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.replace("\\\n", " ").splitlines()]
    instructions = [ln for ln in lines if ln and not ln.startswith("#")]
    froms = [ln.split() for ln in instructions if ln.startswith("FROM ")]
    assert [f[1] for f in froms] == ["python:3.11-slim", "python:3.11-slim"]
    assert froms[0][-2:] == ["AS", "build"]
    build_stage, runtime_stage = text.split("\nFROM ")[1:]
    assert "build --wheel" in build_stage
    # the runtime installs the built wheels offline, and never the dev extra
    assert "--no-index" in runtime_stage and "from=build" in runtime_stage
    assert "[dev]" not in text and "dev]" not in runtime_stage
    assert "useradd --uid 10001" in runtime_stage
    assert "USER 10001:10001" in instructions
    healthcheck = next(ln for ln in instructions if ln.startswith("HEALTHCHECK"))
    assert "urllib.request.urlopen" in healthcheck
    assert "http://127.0.0.1:${GRAPHWIRE_HTTP_PORT:-8080}/health" in healthcheck
    assert "curl" not in healthcheck
    assert instructions[-2:] == ['ENTRYPOINT ["graphwire"]', 'CMD ["worker"]']


def test_dockerignore_keeps_what_the_build_copies() -> None:
    """.dockerignore starts with ``*`` and re-allows exactly what the Dockerfile copies:
    pyproject.toml, README.md, graphwire, topics, graphs and processors, each of which exists."""
    ignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    assert ignore[0] == "*", "allow-list: everything out, then what the image needs"
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    copied = set()
    for ln in (ROOT / "Dockerfile").read_text().splitlines():
        if ln.startswith("COPY ") and "--from" not in ln:
            copied.update(ln.split()[1:-1])
    assert copied == {"pyproject.toml", "README.md", "graphwire", "topics", "graphs", "processors"}
    assert copied <= allowed
    for name in copied:
        assert (ROOT / name).exists()


def test_image_copies_the_import_root_and_every_folder_it_links() -> None:
    """The wheel is built from graphwire/, whose links point at the top-level folders: the
    build stage must copy each link's target too, or the wheel is missing a package."""
    copied = {ln.split()[1] for ln in (ROOT / "Dockerfile").read_text().splitlines()
              if ln.startswith("COPY ") and "--from" not in ln}
    links = sorted(p for p in (ROOT / "graphwire").iterdir() if p.is_symlink())
    assert [p.name for p in links] == ["graphs", "processors", "topics"]
    for link in links:
        assert link.resolve() == ROOT / link.name
        assert link.name in copied
    assert "graphwire" in copied


def test_console_script_and_module_entry_point_resolve() -> None:
    """``graphwire`` (the image's ENTRYPOINT) and ``python -m graphwire`` reach the CLI's main."""
    import importlib
    import tomllib

    from graphwire.processors.cli.main import main

    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = target["graphwire"].partition(":")
    assert getattr(importlib.import_module(module), attr) is main
    assert "from graphwire.processors.cli.main import main" in (
        ROOT / "graphwire" / "__main__.py").read_text()


def image_commands(compose: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Every command given to the graphwire image: compose services and k8s containers."""
    found = {f"compose:{name}": svc["command"] for name, svc in compose["services"].items()
             if svc.get("image") == "graphwire:local"}
    for doc in docs:
        for container in (pod_spec(doc) or {}).get("containers", []):
            if container["image"].split(":")[0].endswith("graphwire"):
                found[f"k8s:{doc['metadata']['name']}"] = container["args"]
    return found


@pytest.mark.parametrize("overlay", list(KUSTOMIZATIONS))
def test_every_image_command_is_a_graphwire_command(
    overlay: str, compose: dict[str, Any], rendered: dict[str, list[Any]]
) -> None:
    """Each command the deployment files give the image parses with the real CLI parser and
    reaches a handler, so a moved or renamed command fails here, not in a cluster."""
    from graphwire.processors.cli.main import build_parser

    commands = image_commands(compose, rendered[overlay])
    assert {"compose:runner", "compose:audit", "compose:gateway", "compose:webhooks",
            "k8s:graphwire-runner", "k8s:graphwire-audit", "k8s:graphwire-gateway",
            "k8s:graphwire-webhooks"} <= set(commands)
    parser = build_parser()
    for where, argv in commands.items():
        args = parser.parse_args(argv)
        assert callable(getattr(args, "func", None)), f"{where}: {argv} reaches no handler"


# --- docker-compose.yml --------------------------------------------------------------------


def test_compose_matches_compose_spec(compose: dict[str, Any]) -> None:
    """docker-compose.yml gives no error against the vendored Compose Specification schema."""
    assert schema_errors(vendored_schema("compose-spec.json"), compose) == []


def test_compose_spec_schema_rejects_a_broken_file(compose: dict[str, Any]) -> None:
    """The Compose schema check is not a rubber stamp: a ``service_ready`` depends_on condition and
    a misspelt ``helthcheck`` key each produce an error naming them."""
    broken = copy.deepcopy(compose)
    broken["services"]["runner"]["depends_on"]["redis"]["condition"] = "service_ready"
    broken["services"]["gateway"]["helthcheck"] = {}
    errors = schema_errors(vendored_schema("compose-spec.json"), broken)
    assert any("service_ready" in e for e in errors), errors
    assert any("helthcheck" in e for e in errors), errors


def _compose_port(service: dict[str, Any], field: str) -> int:
    return int(service["environment"].get(f"GRAPHWIRE_{field.upper()}", settings_default(field)))


def test_compose_stack(compose: dict[str, Any]) -> None:
    """The compose stack has exactly its 12 services: a KRaft Kafka (broker and controller, no
    ZooKeeper), the 7 graphwire services built from one image (the topics-init and db-migrate jobs
    with healthchecks disabled, each processor waiting for them to complete, the webhooks for
    topics-init only), 3 runners on port 8080, the audit on 8081, 2 schedulers on 8082, the
    gateway's API on 8000 (published) with its ops port 8084 unpublished, bound to 0.0.0.0, with
    a required GRAPHWIRE_GATEWAY_API_KEYS and auth never switched off; the runner's stop grace
    period exceeds its GRAPHWIRE_SHUTDOWN_GRACE_S."""
    services = compose["services"]
    assert set(services) == {
        "kafka", "redis", "postgres", "topics-init", "db-migrate",
        "runner", "audit", "gateway", "webhooks", "scheduler", "prometheus", "grafana",
    }
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "zookeeper" not in json.dumps(compose).lower()

    graphwire = {n: s for n, s in services.items() if s.get("build") == "."}
    assert set(graphwire) == {"topics-init", "db-migrate", "runner", "audit", "gateway",
                              "webhooks", "scheduler"}
    assert {s["image"] for s in graphwire.values()} == {"graphwire:local"}, "one image"
    assert services["topics-init"]["command"] == ["topics", "ensure", "--partitions", "12"]
    assert services["db-migrate"]["command"] == ["db", "migrate"]
    for job in ("topics-init", "db-migrate"):
        assert services[job]["healthcheck"] == {"disable": True}
    for name, (_, _, command) in PROCESSORS.items():
        service = services[name.removeprefix("graphwire-")]
        assert service["command"] == command
        # the webhook processor touches no database: it needs the topics only
        jobs = ("topics-init",) if name == "graphwire-webhooks" else ("topics-init", "db-migrate")
        assert set(jobs) <= set(service["depends_on"])
        for dependency in jobs:
            assert service["depends_on"][dependency] == {
                "condition": "service_completed_successfully"
            }

    runner, audit, gateway = services["runner"], services["audit"], services["gateway"]
    assert runner["deploy"]["replicas"] == 3
    assert runner["environment"]["GRAPHWIRE_HTTP_PORT"] == "8080"
    assert audit["environment"]["GRAPHWIRE_AUDIT_HTTP_PORT"] == "8081"
    scheduler = services["scheduler"]  # one leader, one standby
    assert (scheduler["deploy"]["replicas"], _compose_port(scheduler, "scheduler_http_port")) == (
        2, 8082)
    assert _compose_port(gateway, "gateway_port") == 8000
    assert gateway["ports"] == ["8000:8000"]  # the API only: its ops port stays inside
    assert _compose_port(gateway, "gateway_ops_port") == 8084
    assert gateway["environment"]["GRAPHWIRE_GATEWAY_HOST"] == "0.0.0.0"  # unset: loopback
    # the gateway needs real credentials: the variable is required, auth is never switched off
    assert gateway["environment"]["GRAPHWIRE_GATEWAY_API_KEYS"].startswith(
        "${GRAPHWIRE_GATEWAY_API_KEYS:?"
    )
    assert all("GRAPHWIRE_GATEWAY_AUTH" not in s.get("environment", {}) for s in services.values())

    # SIGTERM drains runs for GRAPHWIRE_SHUTDOWN_GRACE_S: docker must wait longer than that
    grace = float(runner["environment"]["GRAPHWIRE_SHUTDOWN_GRACE_S"])
    assert int(runner["stop_grace_period"].removesuffix("s")) > grace


@pytest.mark.parametrize("name", ["runner", "audit", "gateway", "webhooks", "scheduler"])
def test_compose_healthchecks_use_each_processors_health_port(
    compose: dict[str, Any], name: str
) -> None:
    """Each processor's compose healthcheck fetches ``http://127.0.0.1:<its HTTP port>/health``
    with urllib.request."""
    service = compose["services"][name]
    field = PROCESSORS[f"graphwire-{name}"][1]
    test = " ".join(service["healthcheck"]["test"])
    assert f"http://127.0.0.1:{_compose_port(service, field)}/health" in test
    assert "urllib.request" in test


def test_compose_bind_mounts_exist(compose: dict[str, Any]) -> None:
    """The compose file has exactly 3 ``./`` bind mounts, and each source path exists."""
    mounts = [v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])
              if v.startswith("./")]
    assert len(mounts) == 3
    for source in mounts:
        assert (ROOT / source).exists(), source


# --- Prometheus and Grafana ----------------------------------------------------------------


def test_prometheus_scrapes_every_processor(compose: dict[str, Any]) -> None:
    """prometheus.yml scrapes ``/metrics`` of each of the 5 processors on exactly the port its
    compose service configures; the runner's replicas through one DNS A-record job; the file is
    mounted at /etc/prometheus/prometheus.yml."""
    config = load_one(ROOT / "deploy" / "prometheus" / "prometheus.yml")
    targets: dict[str, set[int]] = {}
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A"
            for host in sd["names"]:
                targets.setdefault(host, set()).add(sd["port"])
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                targets.setdefault(host, set()).add(int(port))
    services = compose["services"]
    for name, (_, field, _) in PROCESSORS.items():
        short = name.removeprefix("graphwire-")
        assert targets.get(short) == {_compose_port(services[short], field)}, short
    # the replicated runner is found through Docker's DNS, one A record per replica
    runner_jobs = [j for j in config["scrape_configs"]
                   if any("runner" in sd["names"] for sd in j.get("dns_sd_configs", []))]
    assert len(runner_jobs) == 1
    mount = next(v for v in services["prometheus"]["volumes"] if "prometheus.yml" in v)
    assert mount.split(":")[1] == "/etc/prometheus/prometheus.yml"


def test_grafana_provisioning(compose: dict[str, Any]) -> None:
    """Grafana is provisioned with one Prometheus datasource at http://prometheus:9090 and one
    dashboard provider whose path is where compose mounts ./deploy/grafana/dashboards; the
    dashboard's datasource variable defaults to that datasource's uid."""
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    (source,) = load_one(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = load_one(provisioning / "dashboards" / "graphwire.yml")["providers"]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"]
                  if v.startswith("./"))
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    dashboard = json.loads(DASHBOARD.read_text())
    (ds_var,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert ds_var["current"]["value"] == source["uid"]


# --- the dashboard's PromQL ----------------------------------------------------------------


def _registries_metrics() -> dict[str, set[str]]:
    """Every sample name the three processors can export -> its label names."""
    metrics: dict[str, set[str]] = {}
    for owner in (RunnerMetrics(), AuditMetrics(), GatewayMetrics(), WebhookMetrics()):
        collectors = {id(c): c for c in vars(owner).values() if hasattr(c, "_labelnames")}
        labels_by_name = {c._name: set(c._labelnames) for c in collectors.values()}
        for family in owner.registry.collect():
            labels = labels_by_name.get(family.name, set())
            suffixes = {
                "counter": ["_total", "_created"],
                "histogram": ["_bucket", "_count", "_sum", "_created"],
                "summary": ["", "_count", "_sum", "_created"],
                "gauge": [""],
            }[family.type]
            for suffix in suffixes:
                metrics[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return metrics


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", var["query"]["query"])
            assert match, var["query"]
            queries.append((f"${var['name']}", f"count by ({match[2]}) ({match[1]})"))
    return queries


def _parse(expr: str) -> Any:
    # Grafana's variables, as Grafana substitutes them before Prometheus sees the query
    for var, value in {"$__rate_interval": "1m", "$__interval": "15s", "$workflow": ".*"}.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return promql_parser.parse(expr)


def _selectors_and_labels(ast: Any) -> tuple[list[Any], set[str]]:
    selectors: list[Any] = []
    labels: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            selectors.append(node)
            labels.update(m.name for m in node.matchers.matchers)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)

    promql_parser.walk(ast, visit)
    return selectors, labels


# Prometheus adds these to every scraped series / synthesizes them per target
PROMETHEUS_SERIES = {"up": {"job", "instance"}}
TARGET_LABELS = {"job", "instance"}


def test_dashboard_queries_use_only_exported_metrics_and_labels() -> None:
    """The dashboard has at least 20 PromQL queries, each naming at least one metric; every metric
    is one the processors' registries (or Prometheus itself) export, and every label is one of
    those metrics' labels or a scrape target label."""
    exported = _registries_metrics() | PROMETHEUS_SERIES
    queries = _dashboard_queries()
    assert len(queries) >= 20
    unknown: dict[str, set[str]] = {}
    for title, expr in queries:
        selectors, labels = _selectors_and_labels(_parse(expr))
        assert selectors, f"{title}: no metric in {expr}"
        names = {s.name for s in selectors}
        missing = names - set(exported)
        if missing:
            unknown.setdefault(title, set()).update(missing)
            continue
        allowed = set().union(*(exported[n] for n in names)) | TARGET_LABELS
        assert labels <= allowed, f"{title}: labels {labels - allowed} not on {names}"
    assert not unknown, f"metrics the processors do not export: {unknown}"


def test_dashboard_covers_the_operational_metrics() -> None:
    """The dashboard queries the 13 operational metrics (executions, duration, dead letters, lags,
    in-flight, active runs, node duration, LLM requests and tokens, gateway requests and duration,
    audit rows), shows the 0.5, 0.95 and 0.99 duration quantiles by workflow, and filters failures
    as ``status=~"error|timeout|rejected"``."""
    used = set()
    for _, expr in _dashboard_queries():
        used |= {s.name for s in _selectors_and_labels(_parse(expr))[0]}
    assert {
        "langgraph_workflow_executions_total", "langgraph_workflow_duration_seconds_bucket",
        "graphwire_dead_letters_total", "graphwire_consumer_lag_records",
        "graphwire_audit_consumer_lag_records", "graphwire_in_flight_messages",
        "langgraph_active_workflows", "graphwire_node_duration_seconds_bucket",
        "langgraph_llm_requests_total", "langgraph_llm_tokens_total",
        "graphwire_gateway_requests_total", "graphwire_gateway_request_duration_seconds_bucket",
        "graphwire_audit_rows_written_total",
    } <= used
    exprs = " ".join(e for _, e in _dashboard_queries())
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (workflow_name, le)" in exprs
    assert 'status=~"error|timeout|rejected"' in exprs


def test_dashboard_panels_are_well_formed() -> None:
    """The dashboard's uid is "graphwire", panel ids are unique, and every non-row panel uses the
    ``${datasource}`` variable, has at least one target with unique refIds, and fits in the
    24-column grid."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "graphwire"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_promql_check_catches_a_metric_that_does_not_exist() -> None:
    """The dashboard check finds exactly ``graphwire_no_such_total`` unknown in a query using it,
    and the PromQL parser raises ValueError on a malformed query."""
    selectors, _ = _selectors_and_labels(_parse("sum(rate(graphwire_no_such_total[5m]))"))
    assert {s.name for s in selectors} - set(_registries_metrics()) == {"graphwire_no_such_total"}
    with pytest.raises(ValueError):
        promql_parser.parse("sum by (le (rate(x[5m]))")


# --- GitHub workflows ----------------------------------------------------------------------


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_github_schema(path: Path) -> None:
    """Each GitHub workflow file gives no error against the vendored GitHub workflow schema."""
    assert schema_errors(vendored_schema("github-workflows.json"), load_one(path)) == []


def test_github_schema_rejects_a_broken_workflow() -> None:
    """The workflow schema check is not a rubber stamp: ci.yml without the lint job's ``runs-on``
    gives at least one error."""
    workflow = load_one(ROOT / ".github" / "workflows" / "ci.yml")
    del workflow["jobs"]["lint"]["runs-on"]
    assert schema_errors(vendored_schema("github-workflows.json"), workflow)


def _runs(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def test_ci_workflow() -> None:
    """There are exactly two workflows (ci.yml, image.yml); ci.yml runs on push and pull_request,
    its lint job runs ``make lint`` and its test job ``make test`` with PostgreSQL on 5432 and Redis
    on 6379, and GRAPHWIRE_TEST_DATABASE_URL is built from the postgres service's user, password
    and database."""
    assert {p.name for p in WORKFLOWS} == {"ci.yml", "image.yml"}
    ci = load_one(ROOT / ".github" / "workflows" / "ci.yml")
    assert set(ci["on"]) == {"push", "pull_request"}
    assert "make lint" in _runs(ci["jobs"]["lint"])
    test = ci["jobs"]["test"]
    assert "make test" in _runs(test)
    assert set(test["services"]) == {"postgres", "redis"}
    assert test["services"]["postgres"]["ports"] == ["5432:5432"]
    assert test["services"]["redis"]["ports"] == ["6379:6379"]
    db_url = test["env"]["GRAPHWIRE_TEST_DATABASE_URL"]
    env = test["services"]["postgres"]["env"]
    assert db_url == (f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}"
                      f"@127.0.0.1:5432/{env['POSTGRES_DB']}")


def test_image_workflow_pushes_to_ghcr_from_main() -> None:
    """image.yml runs on pushes to main with ``packages: write``, logs in to ghcr.io, and has
    exactly one build-push step that pushes, tagged with the ``meta`` step's ghcr.io tags."""
    image = load_one(ROOT / ".github" / "workflows" / "image.yml")
    assert image["on"]["push"]["branches"] == ["main"]
    assert image["permissions"]["packages"] == "write"
    steps = image["jobs"]["image"]["steps"]
    login = next(s for s in steps if s.get("uses", "").startswith("docker/login-action@"))
    assert login["with"]["registry"] == "ghcr.io"
    pushes = [s for s in steps if s.get("uses", "").startswith("docker/build-push-action@")
              and s["with"].get("push") is True]
    assert len(pushes) == 1
    meta = next(s for s in steps if s.get("id") == "meta")
    assert meta["with"]["images"].startswith("ghcr.io/")
    assert pushes[0]["with"]["tags"] == "${{ steps.meta.outputs.tags }}"


# --- every GRAPHWIRE_* variable is a setting -----------------------------------------------


def _env_names(node: Any) -> Iterator[str]:
    """Names of environment variables set anywhere in a compose file, workflow or manifest."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("environment", "env", "data", "stringData") and isinstance(value, dict):
                yield from value
            elif key == "env" and isinstance(value, list):
                yield from (var["name"] for var in value)
            yield from _env_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from _env_names(item)


def test_every_graphwire_variable_is_a_setting(rendered: dict[str, list[Any]]) -> None:
    """Every GRAPHWIRE_* variable in docker-compose.yml, the Kubernetes manifests (raw and
    rendered) and the workflows is a Settings field, except the 3 test-harness variables, which
    appear only in workflows and are read by tests/conftest.py; GRAPHWIRE_SHUTDOWN_GRACE_S,
    GRAPHWIRE_GATEWAY_API_KEYS, GRAPHWIRE_SASL_PASSWORD and GRAPHWIRE_TEST_DATABASE_URL are among
    those found."""
    sources: dict[str, Any] = {"docker-compose.yml": load_one(ROOT / "docker-compose.yml")}
    sources.update({str(p.relative_to(ROOT)): load_all(p) for p in K8S.rglob("*.yaml")})
    sources.update({str(p.relative_to(ROOT)): load_one(p) for p in WORKFLOWS})
    sources.update({f"rendered {k}": v for k, v in rendered.items()})
    harness_code = (ROOT / "tests" / "conftest.py").read_text()
    seen: set[str] = set()
    for where, data in sources.items():
        for name in _env_names(data):
            if not name.startswith("GRAPHWIRE_"):
                continue
            seen.add(name)
            if name in HARNESS_VARS:
                assert where.startswith(".github"), f"{where}: test harness variable {name}"
                assert name in harness_code, f"{name} is no longer read by tests/conftest.py"
                continue
            assert settings_field(name) in Settings.model_fields, f"{where}: {name} is no setting"
    assert {"GRAPHWIRE_SHUTDOWN_GRACE_S", "GRAPHWIRE_GATEWAY_API_KEYS",
            "GRAPHWIRE_SASL_PASSWORD", "GRAPHWIRE_TEST_DATABASE_URL"} <= seen


@pytest.mark.parametrize("overlay", list(KUSTOMIZATIONS))
def test_configured_values_are_valid_settings(
    overlay: str, rendered: dict[str, list[Any]]
) -> None:
    """The ConfigMap (with the Secret template's placeholders) is accepted by Settings."""
    values = dict(config_map(rendered[overlay]))
    values.update(load_one(BASE / "secret.template.yaml")["stringData"])
    if values["GRAPHWIRE_SECURITY_PROTOCOL"].startswith("SASL"):  # each container's own user
        values.update(GRAPHWIRE_SASL_USERNAME="graphwire-runner", GRAPHWIRE_SASL_PASSWORD="pw")
    settings = Settings.model_validate({settings_field(k): v for k, v in values.items()})
    assert settings.topics.requests.startswith(settings.topic_prefix)


def test_compose_values_are_valid_settings(compose: dict[str, Any]) -> None:
    """The environment of topics-init, db-migrate, runner, audit, gateway and webhooks in compose,
    with its ``${...}`` references interpolated, validates as Settings."""
    for name in ("topics-init", "db-migrate", "runner", "audit", "gateway", "webhooks"):
        env = compose["services"][name]["environment"]
        Settings.model_validate({settings_field(k): _interpolated(v) for k, v in env.items()})


def _interpolated(value: str) -> str:
    """A compose value with each ``${VAR:-default}`` as compose fills it with VAR unset."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


# --- Kubernetes ----------------------------------------------------------------------------


def test_kustomizations() -> None:
    """Every referenced file exists, every manifest file is referenced (except the Secret
    template, which must not be applied), and the old single-file manifests are gone."""
    for name, directory in KUSTOMIZATIONS.items():
        k = load_one(directory / "kustomization.yaml")
        assert k["kind"] == "Kustomization", name
        assert set(k) <= SUPPORTED_KUSTOMIZE_FIELDS, name
        referenced = {(directory / r).resolve() for r in k.get("resources", [])}
        referenced |= {(directory / p["path"]).resolve() for p in k.get("patches", [])}
        for path in referenced:
            assert path.exists(), f"{name}: {path} does not exist"
        files = {p.resolve() for p in directory.rglob("*.yaml")} - {
            (directory / "kustomization.yaml").resolve(),
            (BASE / "secret.template.yaml").resolve(),
        }
        assert files <= referenced, f"{name}: not referenced: {files - referenced}"
    assert load_one(OVERLAYS["dev"] / "kustomization.yaml")["resources"] == ["../../base"]
    assert load_one(OVERLAYS["prod"] / "kustomization.yaml")["resources"] == [
        "../../base", "kafka-users.yaml"]
    assert "secret.template.yaml" not in load_one(BASE / "kustomization.yaml")["resources"]
    assert not (K8S / "runner.yaml").exists() and not (K8S / "audit.yaml").exists()


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", list(KUSTOMIZATIONS))
def test_manifests_match_kubernetes_schemas(
    overlay: str, version: str, rendered: dict[str, list[Any]],
    scaledobject_schema: dict[str, Any],
) -> None:
    """Every rendered manifest of each overlay (base with the secret template) validates strictly
    against the Kubernetes schemas of 1.29 and the latest version, the KEDA ScaledObject against
    its CRD schema; each overlay has ConfigMap, Deployment, Service, PodDisruptionBudget, Job and
    CronJob, and all but dev also a ScaledObject and a HorizontalPodAutoscaler."""
    docs = rendered[overlay] + ([load_one(BASE / "secret.template.yaml")]
                                if overlay == "base" else [])
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if doc["apiVersion"] == "keda.sh/v1alpha1":
            errors = schema_errors(scaledobject_schema, doc)
            assert errors == [], f"{overlay} {_key(doc)}: {errors}"
            continue
        if doc["kind"] == "KafkaUser":  # Strimzi's: checked field by field in test_kafka_acls_...
            continue
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            path = "/".join(map(str, e.path))
            pytest.fail(f"{overlay} {_key(doc)} against {version}: {path}: {e.message}")
    expected = {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "Job", "CronJob"}
    assert expected <= kinds
    if overlay != "dev":
        assert {"ScaledObject", "HorizontalPodAutoscaler"} <= kinds


def test_schemas_reject_unknown_fields(
    rendered: dict[str, list[Any]], scaledobject_schema: dict[str, Any]
) -> None:
    """The manifest checks are not rubber stamps: a misspelt ``livenesProbe`` fails strict
    Kubernetes validation, and ``maxReplicas`` and ``lagThreshold`` misplaced in the ScaledObject
    are each named in its schema errors."""
    deployment = copy.deepcopy(only(rendered["base"], "Deployment", "graphwire-runner"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, K8S_VERSIONS[0], strict=True)
    scaled = copy.deepcopy(only(rendered["base"], "ScaledObject"))
    scaled["spec"]["maxReplicas"] = 12
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 200
    errors = schema_errors(scaledobject_schema, scaled)
    assert any("maxReplicas" in e for e in errors), errors
    assert any("lagThreshold" in e for e in errors), errors


@pytest.mark.parametrize("overlay", ["base", "prod"])
def test_runner_scaledobject(overlay: str, rendered: dict[str, list[Any]]) -> None:
    """In base and prod, one KEDA ScaledObject scales the graphwire-runner Deployment on one kafka
    trigger with the scaler's required metadata and a positive lagThreshold, watching the
    ConfigMap's bootstrap servers, group "graphwire-runners" and topic "graphwire.requests" from
    the earliest offset, between min and max replicas no more than the 12 partitions; the runner
    Deployment sets no replicas."""
    docs = rendered[overlay]
    scaled = only(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert target["name"] == "graphwire-runner"
    assert target.get("kind", "Deployment") == "Deployment"
    only(docs, "Deployment", target["name"])
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert KAFKA_SCALER_REQUIRED <= set(metadata) <= KAFKA_SCALER_KNOWN
    assert int(metadata["lagThreshold"]) > 0
    # the trigger watches what the runners consume
    config = config_map(docs)
    assert metadata["bootstrapServers"] == config["GRAPHWIRE_BOOTSTRAP_SERVERS"]
    assert metadata["consumerGroup"] == config["GRAPHWIRE_GROUP_ID"] == "graphwire-runners"
    assert metadata["topic"] == f"{config['GRAPHWIRE_TOPIC_PREFIX']}.requests"
    assert metadata["topic"] == "graphwire.requests"
    assert metadata.get("offsetResetPolicy", "latest") == "earliest"
    # more runners than partitions would sit idle
    spec = scaled["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["maxReplicaCount"] <= int(config["GRAPHWIRE_PARTITIONS"]) == 12
    # KEDA owns the replica count: the Deployment does not fight it on every apply
    assert "replicas" not in only(docs, "Deployment", "graphwire-runner")["spec"]


@pytest.mark.parametrize("overlay", ["base", "prod"])
def test_gateway_hpa_on_cpu(overlay: str, rendered: dict[str, list[Any]]) -> None:
    """In base and prod, one HorizontalPodAutoscaler scales the graphwire-gateway Deployment on
    CPU utilisation between valid min and max replicas; the Deployment sets no replicas and its
    one container requests CPU."""
    docs = rendered[overlay]
    hpa = only(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "graphwire-gateway"
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    gateway = only(docs, "Deployment", "graphwire-gateway")
    assert "replicas" not in gateway["spec"]
    (container,) = pod_spec(gateway)["containers"]  # type: ignore[index]
    assert "cpu" in container["resources"]["requests"], "Utilization is relative to requests"


def _container(docs: list[Any], deployment: str) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = pod_spec(only(docs, "Deployment", deployment))
    assert spec is not None
    name = PROCESSORS[deployment][0]
    (container,) = [c for c in spec["containers"] if c["name"] == name]
    return spec, container


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in container["ports"]]
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


@pytest.mark.parametrize("overlay", list(KUSTOMIZATIONS))
@pytest.mark.parametrize("deployment", list(PROCESSORS))
def test_processor_ports_probes_and_services(
    overlay: str, deployment: str, rendered: dict[str, list[Any]]
) -> None:
    """In each overlay each processor's container runs its command and declares exactly its
    configured ops port (plus the gateway's API port); liveness ``/health`` and readiness
    ``/ready`` (and any startup probe) use the ops port, as does the prometheus.io/port
    annotation; its Service selects its pods and exposes one port, the API port for the gateway,
    else the ops port; the Deployment's selector matches its pod labels."""
    docs = rendered[overlay]
    _, field, command = PROCESSORS[deployment]
    _, container = _container(docs, deployment)
    assert container["args"] == command
    configured = int(setting(docs, container, field))
    api = int(setting(docs, container, API_PORTS[deployment])) if deployment in API_PORTS else None
    declared = sorted(p["containerPort"] for p in container["ports"])
    assert declared == sorted([configured] + ([api] if api else [])), f"GRAPHWIRE_{field.upper()}"
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]
    assert liveness["httpGet"]["path"] == "/health"
    assert readiness["httpGet"]["path"] == "/ready"
    for probe in (liveness, readiness, container.get("startupProbe")):
        if probe is not None:
            assert _port_number(container, probe["httpGet"]["port"]) == configured
    template = only(docs, "Deployment", deployment)["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(configured)
    service = only(docs, "Service", deployment)
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert _port_number(container, port["targetPort"]) == (api or configured)
    assert port["port"] == (api or configured)
    selector = only(docs, "Deployment", deployment)["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()


@pytest.mark.parametrize("overlay", list(KUSTOMIZATIONS))
def test_runner_outlives_its_drain(overlay: str, rendered: dict[str, list[Any]]) -> None:
    """In each overlay the runner's shutdown grace is 30 s and its pod's
    terminationGracePeriodSeconds is 45, longer than the drain."""
    docs = rendered[overlay]
    spec, container = _container(docs, "graphwire-runner")
    grace = float(setting(docs, container, "shutdown_grace_s"))
    assert grace == 30
    assert spec["terminationGracePeriodSeconds"] > grace
    assert spec["terminationGracePeriodSeconds"] == 45


@pytest.mark.parametrize("overlay", list(KUSTOMIZATIONS))
def test_pods_are_locked_down(overlay: str, rendered: dict[str, list[Any]]) -> None:
    """In each overlay the 8 pod templates (Deployments, Jobs, CronJobs) run as non-root user 10001
    without a service-account token; every container has a read-only root filesystem, no privilege
    escalation, all capabilities dropped, CPU and memory requests and limits, a writable /tmp
    volume, and a volume at its working directory if it sets one."""
    docs = rendered[overlay]
    pods = [d for d in docs if d["kind"] in POD_TEMPLATE_KINDS]
    assert len(pods) == 8
    for doc in pods:
        spec = pod_spec(doc)
        assert spec is not None
        what = doc["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, what
        assert spec["securityContext"]["runAsUser"] == 10001, what
        assert spec["automountServiceAccountToken"] is False, what
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, what
            assert security["allowPrivilegeEscalation"] is False, what
            assert security["capabilities"]["drop"] == ["ALL"], what
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), what
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/tmp") in volumes, f"{what}: a writable /tmp"
            if "workingDir" in container:
                assert mounts.get(container["workingDir"]) in volumes, what


@pytest.mark.parametrize("overlay", list(KUSTOMIZATIONS))
def test_every_deployment_has_a_disruption_budget(
    overlay: str, rendered: dict[str, list[Any]]
) -> None:
    """In each overlay the Deployments are exactly the 5 processors, and each is selected by
    exactly one PodDisruptionBudget allowing maxUnavailable 1."""
    docs = rendered[overlay]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == set(PROCESSORS)
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    for deployment in deployments:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets
                    if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(matching) == 1, deployment["metadata"]["name"]
        # never 0 allowed disruptions with one replica: drains must proceed
        assert matching[0]["spec"].get("maxUnavailable") == 1


@pytest.mark.parametrize("overlay", list(KUSTOMIZATIONS))
def test_jobs_and_secrets(overlay: str, rendered: dict[str, list[Any]]) -> None:
    """In each overlay the jobs are exactly topics-ensure, db-migrate and the db-prune CronJob
    (concurrencyPolicy Forbid); the secret template holds exactly the 5 credential keys as empty
    or CHANGE_ME placeholders and is never rendered; no secret key is in the ConfigMap; every
    secret reference names the template's secret and its own key (in prod, a processor's
    SASL password comes from its own Kafka user's secret); every container takes
    graphwire-config as envFrom."""
    docs = rendered[overlay]
    args = {d["metadata"]["name"]: pod_spec(d)["containers"][0]["args"]  # type: ignore[index]
            for d in docs if d["kind"] in ("Job", "CronJob")}
    assert args == {
        "graphwire-topics-ensure": ["topics", "ensure"],
        "graphwire-db-migrate": ["db", "migrate"],
        "graphwire-db-prune": ["db", "prune"],
    }
    assert only(docs, "CronJob")["spec"]["concurrencyPolicy"] == "Forbid"
    secret = load_one(BASE / "secret.template.yaml")
    keys = set(secret["stringData"])
    assert keys == {"GRAPHWIRE_DATABASE_URL", "GRAPHWIRE_REDIS_URL", "GRAPHWIRE_SASL_PASSWORD",
                    "GRAPHWIRE_GATEWAY_API_KEYS", "GRAPHWIRE_WEBHOOK_SECRET"}
    for value in secret["stringData"].values():
        assert value == "" or "CHANGE_ME" in value, "placeholders only"
    assert not any(d["kind"] == "Secret" for d in docs), "credentials are never applied from git"
    config = config_map(docs)
    assert not keys & set(config), "secrets stay out of the ConfigMap"
    for doc in docs:
        for container in (pod_spec(doc) or {}).get("containers", []):
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref and overlay == "prod" and var["name"] == "GRAPHWIRE_SASL_PASSWORD":
                    # each processor's own Kafka user (kafka-users.yaml)
                    assert (ref["name"], ref["key"]) == (PRINCIPALS[doc["metadata"]["name"]],
                                                         "password")
                elif ref:
                    assert ref["name"] == secret["metadata"]["name"]
                    assert ref["key"] == var["name"] and ref["key"] in keys
            assert container["envFrom"] == [{"configMapRef": {"name": "graphwire-config"}}]


def test_overlays(rendered: dict[str, list[Any]]) -> None:
    """dev: namespace graphwire-dev, 1 replica of each processor with smaller (millicore) requests
    than base, no autoscalers. prod: namespace graphwire, replication factor 3 (base: 1), at
    least 3 runners and gateways and 2 audit sinks. Each overlay runs one image for every
    processor and job; prod's is a registry path not tagged ``:latest``."""
    base, dev, prod = rendered["base"], rendered["dev"], rendered["prod"]
    # dev: one of each, small, no autoscalers (no KEDA or metrics-server needed)
    assert {d["metadata"]["namespace"] for d in dev} == {"graphwire-dev"}
    for deployment in PROCESSORS:
        assert only(dev, "Deployment", deployment)["spec"]["replicas"] == 1
        _, small = _container(dev, deployment)
        _, full = _container(base, deployment)
        assert small["resources"]["requests"]["cpu"].endswith("m")
        assert small["resources"] != full["resources"]
    assert not [d for d in dev if d["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")]
    # prod: replicated topics, more replicas
    assert {d["metadata"]["namespace"] for d in prod} == {"graphwire"}
    assert config_map(prod)["GRAPHWIRE_REPLICATION_FACTOR"] == "3"
    assert config_map(base)["GRAPHWIRE_REPLICATION_FACTOR"] == "1"
    assert only(prod, "ScaledObject")["spec"]["minReplicaCount"] >= 3
    assert only(prod, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 3
    assert only(prod, "Deployment", "graphwire-audit")["spec"]["replicas"] >= 2
    for overlay in (dev, prod):
        images = {c["image"] for d in overlay if d["kind"] in POD_TEMPLATE_KINDS
                  for c in pod_spec(d)["containers"]}  # type: ignore[index]
        assert len(images) == 1, "one image for every processor and job"
    (prod_image,) = {c["image"] for d in prod if d["kind"] in POD_TEMPLATE_KINDS
                     for c in pod_spec(d)["containers"]}  # type: ignore[index]
    assert not prod_image.endswith(":latest") and "/" in prod_image


# --- hostile tenants: demo graphs off and Kafka locked down in production -------------------

KAFKA_ACLS_SCRIPT = ROOT / "deploy" / "kafka" / "acls.sh"
KAFKA_USERS = OVERLAYS["prod"] / "kafka-users.yaml"
_T = Settings(_env_file=None).topics  # type: ignore[call-arg]
# What each processor does on Kafka, read from the code (runner.py, publisher.py, sink.py,
# dispatcher.py, schedules/intake.py and scheduler.py, gateway app.py and ui/inspector.py and
# ui/lag.py, topics/admin.py): principal -> {(resource type, name, pattern): operations}.
# Read and Write imply Describe. The gateway's result and event readers use no group.
EXPECTED_ACLS: dict[str, dict[tuple[str, str, str], set[str]]] = {
    "graphwire-gateway": {
        ("topic", _T.requests, "literal"): {"Write"},
        ("topic", _T.control, "literal"): {"Write"},
        ("topic", _T.results, "literal"): {"Read", "Write"},  # Write: webhook replay
        ("topic", _T.events, "literal"): {"Read"},
        ("topic", _T.dlq, "literal"): {"Describe"},  # the inspector's lag view
        ("group", "graphwire-runners", "literal"): {"Describe"},
        ("group", "graphwire-audit", "literal"): {"Describe"},
    },
    "graphwire-runner": {
        ("topic", _T.requests, "literal"): {"Read"},
        ("topic", _T.control, "literal"): {"Read"},
        ("topic", _T.events, "literal"): {"Write"},
        ("topic", _T.results, "literal"): {"Write"},
        ("topic", _T.dlq, "literal"): {"Write"},
        ("group", "graphwire-runners", "literal"): {"Read"},
    },
    "graphwire-audit": {
        ("topic", _T.requests, "literal"): {"Read"},
        ("topic", _T.events, "literal"): {"Read"},
        ("topic", _T.results, "literal"): {"Read"},
        ("topic", _T.dlq, "literal"): {"Read"},
        ("group", "graphwire-audit", "literal"): {"Read"},
    },
    "graphwire-webhooks": {
        ("topic", _T.results, "literal"): {"Read"},
        ("topic", _T.dlq, "literal"): {"Write"},
        ("group", "graphwire-webhooks", "literal"): {"Read"},
    },
    "graphwire-scheduler": {
        ("topic", _T.requests, "literal"): {"Read", "Write"},
        ("group", "graphwire-scheduler", "literal"): {"Read"},
    },
    "graphwire-admin": {
        ("topic", f"{_T.prefix}.", "prefix"): {"Create", "Describe", "DescribeConfigs", "Alter"},
    },
    "graphwire-keda": {
        ("topic", _T.requests, "literal"): {"Describe"},
        ("group", "graphwire-runners", "literal"): {"Describe"},
    },
}
# Deployment or Job -> the Kafka principal it authenticates as (None: no Kafka client)
PRINCIPALS = {
    "graphwire-runner": "graphwire-runner",
    "graphwire-audit": "graphwire-audit",
    "graphwire-gateway": "graphwire-gateway",
    "graphwire-webhooks": "graphwire-webhooks",
    "graphwire-scheduler": "graphwire-scheduler",
    "graphwire-topics-ensure": "graphwire-admin",
    "graphwire-db-migrate": None,
    "graphwire-db-prune": None,
}


def _acls_of_kafka_users(docs: list[dict[str, Any]]) -> dict[str, dict[Any, set[str]]]:
    found: dict[str, dict[Any, set[str]]] = {}
    for user in docs:
        assert user["apiVersion"] == "kafka.strimzi.io/v1", _key(user)
        assert set(user["spec"]) == {"authentication", "authorization"}, _key(user)
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}
        assert user["spec"]["authorization"]["type"] == "simple"
        assert set(user["metadata"]["labels"]) == {"strimzi.io/cluster"}
        acls: dict[Any, set[str]] = {}
        for acl in user["spec"]["authorization"]["acls"]:
            assert set(acl) == {"resource", "operations"}, acl  # allow, any host
            resource = acl["resource"]
            assert set(resource) <= {"type", "name", "patternType"}, resource
            key = (resource["type"], resource["name"], resource.get("patternType", "literal"))
            assert key not in acls, f"{user['metadata']['name']}: {key} twice"
            acls[key] = set(acl["operations"])
        found[user["metadata"]["name"]] = acls
    return found


def _acls_of_script(text: str) -> dict[str, dict[Any, set[str]]]:
    """The grants of ``acls.sh``: ``grant PRINCIPAL TYPE NAME PATTERN OP...`` lines."""
    found: dict[str, dict[Any, set[str]]] = {}
    for line in text.splitlines():
        if not line.startswith("grant "):
            continue
        _, principal, kind, name, pattern, *ops = line.split()
        name = name.replace("${PREFIX}", _T.prefix)
        acls = found.setdefault(principal, {})
        assert (kind, name, pattern) not in acls, line
        acls[(kind, name, pattern)] = set(ops)
    return found


def test_kafka_acls_grant_each_processor_only_what_it_uses(
    rendered: dict[str, list[Any]],
) -> None:
    """The prod overlay's Strimzi KafkaUsers and deploy/kafka/acls.sh grant the same ACLs: the
    gateway writes requests and control, the runner reads those and writes events, results and
    dlq, the webhooks read results and write dlq, the audit sink reads the four data topics;
    no principal gets All, Delete, cluster rights or a wildcard."""
    users = [d for d in rendered["prod"] if d["kind"] == "KafkaUser"]
    assert _acls_of_kafka_users(users) == EXPECTED_ACLS
    assert {d["metadata"]["namespace"] for d in users} == {"graphwire"}
    script = KAFKA_ACLS_SCRIPT.read_text()
    assert script.startswith("#!/bin/sh\n") and "set -eu" in script
    assert _acls_of_script(script) == EXPECTED_ACLS
    for acls in EXPECTED_ACLS.values():
        for (kind, name, _), ops in acls.items():
            assert kind in ("topic", "group") and "*" not in name
            assert not ops & {"All", "Delete", "AlterConfigs", "ClusterAction"}
    assert not [d for d in rendered["base"] + rendered["dev"] if d["kind"] == "KafkaUser"]


def test_prod_overlay_is_sasl_ssl_with_one_principal_per_processor(
    rendered: dict[str, list[Any]],
) -> None:
    """Every prod container with a Kafka client authenticates over SASL_SSL as its own principal
    (password from the KafkaUser's Secret, the cluster CA mounted); its settings load and
    `graphwire doctor` finds nothing to fix on Kafka."""
    from graphwire.processors.cli.doctor import settings_checks

    docs = rendered["prod"]
    config = config_map(docs)
    assert config["GRAPHWIRE_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["GRAPHWIRE_SASL_MECHANISM"] == "SCRAM-SHA-512"
    seen = set()
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        (container,) = spec["containers"]
        seen.add(doc["metadata"]["name"])
        principal = PRINCIPALS[doc["metadata"]["name"]]
        env = container_env(docs, container)
        refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in container.get("env", [])
                if "secretKeyRef" in v.get("valueFrom", {})}
        if principal is None:
            assert env["GRAPHWIRE_SECURITY_PROTOCOL"] == "PLAINTEXT"  # no Kafka client at all
            assert "GRAPHWIRE_SASL_PASSWORD" not in refs
            continue
        assert env["GRAPHWIRE_SASL_USERNAME"] == principal
        assert refs["GRAPHWIRE_SASL_PASSWORD"] == {"name": principal, "key": "password",
                                                   "optional": False}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        ca_dir = config["GRAPHWIRE_SSL_CAFILE"].rsplit("/", 1)[0]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mounts[ca_dir]]
        assert volume["secret"]["secretName"] == "kafka-cluster-ca-cert"
        values = {settings_field(k): v for k, v in env.items()}
        values["sasl_password"] = "from-the-secret"
        values["ssl_cafile"] = None  # the file exists only in the pod
        checks = settings_checks(Settings.model_validate(values))
        kafka = [c for c in checks if "Kafka" in c.name or "demo" in c.name]
        assert [(c.name, c.status) for c in kafka] == [("Kafka TLS/SASL", "pass"),
                                                       ("demo graphs", "pass")]
    assert seen == set(PRINCIPALS)


def test_demo_graphs_only_where_asked(rendered: dict[str, list[Any]], compose: dict[str, Any]
                                      ) -> None:
    """The demo graphs are off in the base and the prod overlay (which says so), on in the dev
    overlay and in compose's local stack (which lets GRAPHWIRE_DEMO_GRAPHS turn them off)."""
    assert config_map(rendered["base"])["GRAPHWIRE_DEMO_GRAPHS"] == "false"
    assert config_map(rendered["prod"])["GRAPHWIRE_DEMO_GRAPHS"] == "false"
    assert load_one(OVERLAYS["prod"] / "patches" / "config.yaml")["data"][
        "GRAPHWIRE_DEMO_GRAPHS"] == "false"
    assert config_map(rendered["dev"])["GRAPHWIRE_DEMO_GRAPHS"] == "true"
    assert compose["services"]["runner"]["environment"]["GRAPHWIRE_DEMO_GRAPHS"] == (
        "${GRAPHWIRE_DEMO_GRAPHS:-true}")
    assert settings_default("demo_graphs") is False
