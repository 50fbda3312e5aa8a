#!/usr/bin/env python3
"""Static checks for guardrail's deploy/ artifacts.

    python3 deploy/check_deploy.py        # from anywhere; exit 0 = all checks passed

(a) Kubernetes manifests (deploy/kubernetes/*.yaml): the Deployment runs two
    containers and the guardrail one has the probes, port, resources and security
    context the README promises; the Service, ServiceMonitor, Secret and ConfigMap
    fit together; the policy TOML parses (alone and rendered with the Secret's
    [kafka.properties] fragment, exactly as the initContainer renders it).
(a') The scaled deployment (deploy/kubernetes/scaled/*.yaml): one Deployment per
    stage running `guardrail run ... --stage ingest|judge` with the same container
    checks, the ConfigMap (partials topic, [scale] partials_timeout, the sidecar's
    flags), Services scraped as job "guardrail", PodDisruptionBudgets, and the HPA
    on the ingest Deployment (maxReplicas within the stated input partitions, an
    External lag metric that prometheus-adapter.config.yaml serves).
(b) PromQL: every expression in the Grafana dashboard and the Prometheus rules
    names only metrics guardrail exports (SPEC section 8), with only their labels,
    and every alert has its annotations and a promtool unit test.

Needs Python >= 3.11 (tomllib) and PyYAML (`pip install pyyaml` if missing).
It does not run promtool; see README.md for the promtool commands. One file on
purpose, over the usual length: it runs from anywhere as a plain script, and its
sections share the helpers and the one list of errors.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import tomllib
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("check_deploy: PyYAML is required: pip install pyyaml")

DEPLOY = Path(__file__).resolve().parent
K8S = DEPLOY / "kubernetes"
RULES = DEPLOY / "prometheus" / "guardrail-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "guardrail-rules.test.yml"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "guardrail.json"

HTTP_PORT = 9464
CONFIG_PATH = "/etc/guardrail/guardrail.toml"

# The metrics guardrail exports and their labels (SPEC section 8 plus the sidecar
# brief). Keep in sync with src/telemetry.
EXPORTED: dict[str, set[str]] = {
    "guardrail_events_total": {"source", "status"},
    "guardrail_windows_closed_total": set(),
    "guardrail_commands_total": {"action"},
    "guardrail_decision_latency_seconds": set(),
    "guardrail_watermark_lag_seconds": set(),
    "guardrail_metric_value": {"flag", "cohort", "metric", "variant"},
    "guardrail_metric_threshold": {"flag", "cohort", "metric"},
    "guardrail_breach_streak": {"flag", "cohort", "metric"},
    "guardrail_rollout_percent": {"flag", "cohort"},
    "guardrail_active_cells": set(),
    "guardrail_dlq_total": {"reason"},
    "guardrail_schema_registry_fetches_total": {"topic", "result"},
    "guardrail_flag_expired": {"flag"},
    "guardrail_cohort_state": {"flag", "cohort", "state"},
    "guardrail_srm_p_value": {"flag", "cohort"},
    "guardrail_ready": set(),
    "guardrail_consumer_lag_messages": {"topic", "partition"},
    "guardrail_partitions_assigned": set(),
    "guardrail_watermark_clamped_total": set(),
    "guardrail_watermark_excluded_partitions": set(),
    # Scaled deployment (`run --stage ingest|judge`, deploy/kubernetes/scaled).
    "guardrail_stage_info": {"stage"},  # 1; stage = ingest | judge | both
    # stage 1, ingest
    "guardrail_partials_published_total": set(),
    "guardrail_partials_bytes_total": set(),
    "guardrail_partials_last_published_timestamp_seconds": set(),
    # stage 2, judge
    "guardrail_partials_received_total": {"outcome"},  # merged|duplicate|late|invalid
    "guardrail_partials_missing_total": set(),
    "guardrail_partials_pending_windows": set(),
    "guardrail_partition_last_window_end_seconds": {"topic", "partition"},
    "guardrail_partial_to_command_seconds": set(),
}
HISTOGRAMS = {"guardrail_decision_latency_seconds", "guardrail_partial_to_command_seconds"}
# Labels Prometheus attaches to every scraped series (static config or the
# Prometheus Operator's ServiceMonitor), usable in any selector or grouping.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "service", "endpoint"}
REQUIRED_ANNOTATIONS = ("summary", "description", "runbook")
EXPECTED_ALERTS = {
    "GuardrailDown", "GuardrailNotReady", "GuardrailConsumerLagGrowing",
    "GuardrailWatermarkStalled", "GuardrailDLQRate", "GuardrailDecisionLatencyHigh",
    "GuardrailBreachStreak", "GuardrailFlagPaused",
    # guardrail-scaled
    "GuardrailIngestLagGrowing", "GuardrailIngestNotPublishing",
    "GuardrailInputPartitionNotReporting", "GuardrailWindowsClosedIncomplete",
    "GuardrailLatePartials",
}

errors: list[str] = []


def fail(where: str, msg: str) -> None:
    errors.append(f"{where}: {msg}")


def rel(path: Path) -> str:
    return str(path.relative_to(DEPLOY.parent))


# --------------------------------------------------------------------- (a) k8s


def load_manifests(directory: Path = K8S, skip: tuple[str, ...] = ()) -> dict[str, list[tuple[Path, dict]]]:
    """All documents in one directory (not below it), grouped by kind."""
    by_kind: dict[str, list[tuple[Path, dict]]] = {}
    files = sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml"))
    files = [f for f in files if f.name not in skip]
    if not files:
        fail(rel(directory), "no YAML files found")
    for path in files:
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as e:
            fail(rel(path), f"invalid YAML: {e}")
            continue
        for doc in docs:
            if not isinstance(doc, dict) or "kind" not in doc:
                fail(rel(path), "document without a kind")
                continue
            if doc["kind"] != "Kustomization":
                for field in ("apiVersion", "metadata"):
                    if field not in doc:
                        fail(rel(path), f"{doc['kind']} has no {field}")
                if not doc.get("metadata", {}).get("name"):
                    fail(rel(path), f"{doc['kind']} has no metadata.name")
            by_kind.setdefault(doc["kind"], []).append((path, doc))
    return by_kind


@functools.cache
def sidecar_manifests() -> dict[str, list[tuple[Path, dict]]]:
    """deploy/kubernetes/*.yaml, loaded (and its problems reported) once."""
    return load_manifests()


def one(by_kind: dict, kind: str, directory: Path = K8S) -> tuple[Path, dict] | None:
    found = by_kind.get(kind, [])
    if len(found) != 1:
        fail(rel(directory), f"expected exactly one {kind}, found {len(found)}")
        return None
    return found[0]


def resolve_port(container: dict, port) -> int | None:
    """A probe/targetPort as a number: itself, or the containerPort of that name."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def check_probe(where: str, c: dict, probe_name: str, path: str) -> None:
    probe = c.get(probe_name)
    if not probe:
        fail(where, f"no {probe_name}")
        return
    get = probe.get("httpGet", {})
    if get.get("path") != path:
        fail(where, f"{probe_name} path is {get.get('path')!r}, expected {path!r}")
    if resolve_port(c, get.get("port")) != HTTP_PORT:
        fail(where, f"{probe_name} port {get.get('port')!r} does not resolve to {HTTP_PORT}")


def check_deployment(path: Path, dep: dict) -> tuple[dict, dict]:
    where = f"{rel(path)} Deployment/{dep['metadata']['name']}"
    pod = dep.get("spec", {}).get("template", {}).get("spec", {})
    containers = pod.get("containers", [])
    if len(containers) != 2:
        fail(where, f"expected 2 containers (app + guardrail sidecar), found {len(containers)}")
    guard = [c for c in containers if c.get("name") == "guardrail"]
    if len(guard) != 1:
        fail(where, "no container named 'guardrail'")
        return pod, {}
    c = guard[0]
    check_guardrail_container(f"{where} container guardrail", pod, c)
    check_render_config(where, pod)
    return pod, c


def check_guardrail_container(cw: str, pod: dict, c: dict) -> None:
    """Probes, port, resources, security context, args and config mount of guardrail."""
    check_probe(cw, c, "livenessProbe", "/healthz")
    check_probe(cw, c, "readinessProbe", "/readyz")
    if HTTP_PORT not in [p.get("containerPort") for p in c.get("ports", [])]:
        fail(cw, f"containerPort {HTTP_PORT} not declared")
    res = c.get("resources", {})
    for section in ("requests", "limits"):
        for key in ("cpu", "memory"):
            if key not in res.get(section, {}):
                fail(cw, f"resources.{section}.{key} missing")
    sc_pod, sc = pod.get("securityContext", {}), c.get("securityContext", {})
    if not (sc.get("runAsNonRoot") or sc_pod.get("runAsNonRoot")):
        fail(cw, "securityContext.runAsNonRoot is not true")
    if not sc.get("readOnlyRootFilesystem"):
        fail(cw, "securityContext.readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        fail(cw, "securityContext.allowPrivilegeEscalation is not false")
    argv = (c.get("command") or []) + (c.get("args") or [])
    if "run" not in argv or CONFIG_PATH not in argv:
        fail(cw, f"args must be `run --config {CONFIG_PATH} ...`, got {argv}")
    mounts = {m.get("mountPath") for m in c.get("volumeMounts", [])}
    if str(Path(CONFIG_PATH).parent) not in mounts:
        fail(cw, f"nothing mounted at {Path(CONFIG_PATH).parent}")


def referenced(pod: dict, kind: str) -> dict[str, set[str]]:
    """Secret or ConfigMap names referenced by the pod -> keys used (empty = any)."""
    refs: dict[str, set[str]] = {}
    vol_key, name_key = ("secret", "secretName") if kind == "Secret" else ("configMap", "name")
    for v in pod.get("volumes", []):
        src = v.get(vol_key)
        if src:
            refs.setdefault(src[name_key], set()).update(i["key"] for i in src.get("items", []))
    ref_key = "secretKeyRef" if kind == "Secret" else "configMapKeyRef"
    env_key = "secretRef" if kind == "Secret" else "configMapRef"
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        for e in c.get("env", []):
            r = e.get("valueFrom", {}).get(ref_key)
            if r:
                refs.setdefault(r["name"], set()).add(r["key"])
        for e in c.get("envFrom", []):
            if e.get(env_key):
                refs.setdefault(e[env_key]["name"], set())
    return refs


def data_of(doc: dict) -> dict[str, str]:
    return {**(doc.get("data") or {}), **(doc.get("stringData") or {})}


def check_service_and_monitor(by_kind: dict, pod_labels: dict, container: dict) -> None:
    found = one(by_kind, "Service")
    if not found:
        return
    path, svc = found
    where = f"{rel(path)} Service/{svc['metadata']['name']}"
    selector = svc.get("spec", {}).get("selector", {})
    if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
        fail(where, f"selector {selector} does not match the pod labels {pod_labels}")
    ports = [p for p in svc.get("spec", {}).get("ports", [])
             if resolve_port(container, p.get("targetPort", p.get("port"))) == HTTP_PORT]
    if not ports:
        fail(where, f"no port targets the guardrail container's {HTTP_PORT}")
        return
    if ports[0].get("port") != HTTP_PORT:
        fail(where, f"service port is {ports[0].get('port')}, expected {HTTP_PORT}")
    port_name = ports[0].get("name")
    if port_name != "metrics":
        fail(where, f"port {HTTP_PORT} is named {port_name!r}, expected 'metrics'")

    found = one(by_kind, "ServiceMonitor")
    if not found:
        return
    mpath, mon = found
    mwhere = f"{rel(mpath)} ServiceMonitor/{mon['metadata']['name']}"
    if mon.get("apiVersion") != "monitoring.coreos.com/v1":
        fail(mwhere, f"apiVersion is {mon.get('apiVersion')!r}")
    match = mon.get("spec", {}).get("selector", {}).get("matchLabels", {})
    svc_labels = svc["metadata"].get("labels", {})
    if not match or any(svc_labels.get(k) != v for k, v in match.items()):
        fail(mwhere, f"selector {match} does not select the Service labels {svc_labels}")
    endpoints = mon.get("spec", {}).get("endpoints", [])
    if not any(e.get("port") == port_name and e.get("path", "/metrics") == "/metrics"
               for e in endpoints):
        fail(mwhere, f"no endpoint scrapes port {port_name!r} at /metrics")
    # GuardrailDown matches job="guardrail"; the operator names the job after the
    # Service unless jobLabel says otherwise.
    if not mon.get("spec", {}).get("jobLabel") and svc["metadata"]["name"] != "guardrail":
        fail(mwhere, "scrape job would not be 'guardrail' (Service name), alerts expect it")


def check_policy(where: str, text: str) -> dict | None:
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        fail(where, f"TOML does not parse: {e}")
        return None
    metrics = cfg.get("metrics")
    flags = cfg.get("flags")
    if not isinstance(metrics, list) or not metrics:
        fail(where, "no [[metrics]]")
        return cfg
    if not isinstance(flags, list) or not flags:
        fail(where, "no [[flags]]")
        return cfg
    names = [m.get("name") for m in metrics]
    for i, m in enumerate(metrics):
        if m.get("type") not in ("rate", "mean", "quantile"):
            fail(where, f"metrics[{i}].type: {m.get('type')!r} is not rate|mean|quantile")
    for i, f in enumerate(flags):
        for section in ("guardrails", "success"):
            for j, g in enumerate(f.get(section, [])):
                if g.get("metric") not in names:
                    fail(where, f"flags[{i}].{section}[{j}].metric: unknown metric {g.get('metric')!r}")
    listen = cfg.get("http", {}).get("listen", "")
    if not listen.endswith(f":{HTTP_PORT}"):
        fail(where, f"[http] listen is {listen!r}, probes and Service expect port {HTTP_PORT}")
    return cfg


def check_configmap_and_secret(by_kind: dict, pod: dict) -> None:
    cms = {d["metadata"]["name"]: (p, d) for p, d in by_kind.get("ConfigMap", [])}
    secrets = {d["metadata"]["name"]: (p, d) for p, d in by_kind.get("Secret", [])}
    if not any(p.name == "secret.example.yaml" for p, _ in secrets.values()):
        fail(rel(K8S), "secret.example.yaml holds no Secret")

    for name, keys in referenced(pod, "Secret").items():
        if name not in secrets:
            fail("deployment.yaml", f"references Secret {name!r}, not defined in secret.example.yaml")
        elif missing := keys - set(data_of(secrets[name][1])):
            fail(rel(secrets[name][0]), f"Secret {name} lacks keys {sorted(missing)}")
    cm_refs = referenced(pod, "ConfigMap")
    for name in cm_refs:
        if name not in cms:
            fail("deployment.yaml", f"references ConfigMap {name!r}, not defined")

    policy = None
    for name, (path, cm) in cms.items():
        for key, text in data_of(cm).items():
            if key.endswith(".toml"):
                where = f"{rel(path)} ConfigMap/{name} key {key}"
                cfg = check_policy(where, text)
                if cfg is not None and "properties" in cfg.get("kafka", {}):
                    fail(where, "must not define [kafka.properties]: it comes from the Secret")
                policy = policy or text
    if policy is None:
        fail(rel(K8S), "no ConfigMap with a .toml policy")
        return

    # Render exactly as the initContainer does: policy, then each Secret .toml.
    fragments = [t for _, s in secrets.values() for k, t in data_of(s).items() if k.endswith(".toml")]
    if not fragments:
        fail(rel(K8S), "no Secret holds a .toml [kafka.properties] fragment")
        return
    rendered = check_policy("rendered guardrail.toml (ConfigMap + Secret)", policy + "\n".join(fragments))
    if rendered is not None:
        props = rendered.get("kafka", {}).get("properties", {})
        for key in ("security.protocol", "sasl.mechanisms", "sasl.username", "sasl.password"):
            if key not in props:
                fail("rendered guardrail.toml", f"[kafka.properties] lacks {key!r}")


def check_kustomization(by_kind: dict) -> None:
    found = one(by_kind, "Kustomization")
    if not found:
        return
    path, k = found
    for r in k.get("resources", []):
        if not (K8S / r).exists():
            fail(rel(path), f"resource {r} does not exist")
    listed = set(k.get("resources", []))
    for f in ("configmap.yaml", "deployment.yaml", "service.yaml", "servicemonitor.yaml"):
        if f not in listed:
            fail(rel(path), f"{f} is not a resource")


def check_kubernetes() -> None:
    by_kind = sidecar_manifests()
    found = one(by_kind, "Deployment")
    if not found:
        return
    pod, container = check_deployment(*found)
    pod_labels = found[1].get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    check_service_and_monitor(by_kind, pod_labels, container)
    check_configmap_and_secret(by_kind, pod)
    check_kustomization(by_kind)


# ------------------------------------------------------- (a') scaled deployment
#
# deploy/kubernetes/scaled: guardrail-ingest (`run --stage ingest`, autoscaled) and
# guardrail-judge (`run --stage judge`), sharing one ConfigMap and the sidecar's
# Secret; one ServiceMonitor; PodDisruptionBudgets; an HPA on the ingest stage's
# consumer lag served by prometheus-adapter (its rule is a file here, not a resource).

SCALED = K8S / "scaled"
ADAPTER_CONFIG = SCALED / "prometheus-adapter.config.yaml"
README = DEPLOY / "README.md"
STAGES = ("ingest", "judge")
LAG_METRIC = "guardrail_consumer_lag_messages"
# librdkafka's default session.timeout.ms: a killed ingest pod holds its partitions
# this long, so [scale] partials_timeout must be longer.
SESSION_TIMEOUT_S = 45
DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h)\s*$")


def seconds(text) -> float | None:
    m = DURATION.match(str(text))
    if not m:
        return None
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]]


def selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes LabelSelector (matchLabels and matchExpressions) against labels."""
    if not selector:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}.get(op)
        if not ok:
            return False
    return True


def stage_of(c: dict) -> str | None:
    """The value of `--stage` in a container's argv."""
    argv = (c.get("command") or []) + (c.get("args") or [])
    for i, a in enumerate(argv):
        if a == "--stage" and i + 1 < len(argv):
            return argv[i + 1]
        if isinstance(a, str) and a.startswith("--stage="):
            return a.split("=", 1)[1]
    return None


def check_render_config(where: str, pod: dict) -> None:
    """The initContainer renders the config where guardrail reads it and checks it."""
    init = [c for c in pod.get("initContainers", []) if c.get("name") == "render-config"]
    if not init:
        fail(where, "no initContainer render-config")
        return
    script = " ".join((init[0].get("command") or []) + (init[0].get("args") or []))
    if f"> {CONFIG_PATH}" not in script or f"guardrail check --config {CONFIG_PATH}" not in script:
        fail(where, f"render-config must write {CONFIG_PATH} and run `guardrail check` on it")


def partials_partitions(topic: str) -> int | None:
    """--partitions of the partials topic in README's kafka-topics.sh --create command."""
    text = README.read_text() if README.exists() else ""
    for line in text.replace("\\\n", " ").splitlines():  # shell continuations joined
        if "kafka-topics.sh" in line and "--create" in line and f"--topic {topic} " in line:
            m = re.search(r"--partitions\s+(\d+)", line)
            if not m or "cleanup.policy=delete" not in line:
                fail(rel(README), "the partials topic's --create line needs --partitions N and cleanup.policy=delete")
                return None
            retention = re.search(r"retention\.ms=(\d+)", line)
            if not retention or int(retention[1]) < 86_400_000:
                fail(rel(README), "the partials topic needs retention.ms >= 86400000 (1 day)")
            return int(m[1])
    fail(rel(README), f"no `kafka-topics.sh --create --topic {topic} ...` line ([topics] partials)")
    return None


def sidecar_policy() -> dict | None:
    for _, cm in sidecar_manifests().get("ConfigMap", []):
        text = data_of(cm).get("guardrail.toml")
        if text:
            try:
                return tomllib.loads(text)
            except tomllib.TOMLDecodeError:
                return None  # reported by check_configmap_and_secret
    return None


def check_scaled_policy(by_kind: dict, pods: list[dict]) -> dict | None:
    """The ConfigMap: a valid policy, the sidecar's flags, a partials topic, [scale]."""
    cms = {d["metadata"]["name"]: (p, d) for p, d in by_kind.get("ConfigMap", [])}
    for pod in pods:
        for name in referenced(pod, "ConfigMap"):
            if name not in cms:
                fail(rel(SCALED), f"a Deployment references ConfigMap {name!r}, not defined here")
    if len(cms) != 1:
        fail(rel(SCALED), f"expected one ConfigMap (guardrail.toml), found {len(cms)}")
        return None
    name, (path, cm) = next(iter(cms.items()))
    where = f"{rel(path)} ConfigMap/{name} key guardrail.toml"
    text = data_of(cm).get("guardrail.toml")
    if not text:
        fail(where, "missing")
        return None
    cfg = check_policy(where, text)
    if cfg is None:
        return None
    if "properties" in cfg.get("kafka", {}):
        fail(where, "must not define [kafka.properties]: it comes from the Secret")
    topics = cfg.get("topics", {})
    partials = topics.get("partials")
    if not partials:
        fail(where, "[topics] partials is not set (stage 1 -> stage 2)")
    elif partials in [v for k, v in topics.items() if k != "partials"]:
        fail(where, f"[topics] partials {partials!r} is also another topic")
    timeout = seconds(cfg.get("scale", {}).get("partials_timeout", ""))
    if timeout is None:
        fail(where, "[scale] partials_timeout is missing or not a duration like \"120s\"")
    elif timeout <= SESSION_TIMEOUT_S:
        fail(where, f"[scale] partials_timeout must exceed the ingest failover time, "
                    f"at least the {SESSION_TIMEOUT_S}s session timeout")
    sidecar = sidecar_policy()
    if sidecar is not None:
        for table in ("metrics", "flags"):
            if cfg.get(table) != sidecar.get(table):
                fail(where, f"[[{table}]] differs from the sidecar's ../configmap.yaml; keep the example's policy in one form")
    # Render as the initContainer does, with the sidecar's example Secret.
    secrets = [d for _, d in sidecar_manifests().get("Secret", [])]
    fragments = [t for d in secrets for k, t in data_of(d).items() if k.endswith(".toml")]
    for pod in pods:
        for sname, keys in referenced(pod, "Secret").items():
            known = [d for d in secrets if d["metadata"]["name"] == sname]
            if not known:
                fail(rel(SCALED), f"a Deployment references Secret {sname!r}, not in ../secret.example.yaml")
            elif missing := keys - set(data_of(known[0])):
                fail(rel(SCALED), f"Secret {sname} lacks keys {sorted(missing)}")
    check_policy("scaled: rendered guardrail.toml (ConfigMap + Secret)", text + "\n".join(fragments))
    return cfg


def check_scaled_deployments(by_kind: dict) -> dict[str, tuple[Path, dict]]:
    """One Deployment per stage, each a single guardrail container run with --stage."""
    found: dict[str, tuple[Path, dict]] = {}
    for path, dep in by_kind.get("Deployment", []):
        where = f"{rel(path)} Deployment/{dep['metadata']['name']}"
        pod = dep.get("spec", {}).get("template", {}).get("spec", {})
        containers = pod.get("containers", [])
        if [c.get("name") for c in containers] != ["guardrail"]:
            fail(where, "expected one container, named 'guardrail'")
            continue
        c = containers[0]
        check_guardrail_container(f"{where} container guardrail", pod, c)
        check_render_config(where, pod)
        stage = stage_of(c)
        if stage not in STAGES:
            fail(where, f"guardrail must run with --stage {'|'.join(STAGES)}, got {stage!r}")
            continue
        if stage in found:
            fail(where, f"a second Deployment for --stage {stage}")
        found[stage] = (path, dep)
        if (pod.get("terminationGracePeriodSeconds") or 30) <= 30:
            fail(where, "terminationGracePeriodSeconds must exceed the 30 s drain")
        pod_labels = dep["spec"]["template"].get("metadata", {}).get("labels", {})
        if not selects(dep["spec"].get("selector", {}), pod_labels):
            fail(where, "spec.selector does not select the pod template's labels")
    for stage in STAGES:
        if stage not in found:
            fail(rel(SCALED), f"no Deployment runs `guardrail run ... --stage {stage}`")
    return found


def pod_labels_of(dep: dict) -> dict:
    return dep.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})


def check_scaled_monitoring(by_kind: dict, deps: dict[str, tuple[Path, dict]]) -> None:
    """A Service per stage on port 9464, scraped as job "guardrail"; a PDB per stage."""
    services = by_kind.get("Service", [])
    mon = one(by_kind, "ServiceMonitor", SCALED)
    sidecar_svc = [d for _, d in sidecar_manifests().get("Service", [])]
    for stage, (_, dep) in deps.items():
        labels = pod_labels_of(dep)
        container = dep["spec"]["template"]["spec"]["containers"][0]
        mine = [(p, s) for p, s in services if s.get("spec", {}).get("selector")
                and selects({"matchLabels": s["spec"]["selector"]}, labels)]
        if len(mine) != 1:
            fail(rel(SCALED), f"expected one Service selecting the {stage} pods, found {len(mine)}")
            continue
        path, svc = mine[0]
        where = f"{rel(path)} Service/{svc['metadata']['name']}"
        ports = [p for p in svc.get("spec", {}).get("ports", [])
                 if resolve_port(container, p.get("targetPort", p.get("port"))) == HTTP_PORT]
        if not ports or ports[0].get("name") != "metrics" or ports[0].get("port") != HTTP_PORT:
            fail(where, f"needs a port named 'metrics', {HTTP_PORT}, targeting the container's {HTTP_PORT}")
        if mon:
            mpath, m = mon
            mwhere = f"{rel(mpath)} ServiceMonitor/{m['metadata']['name']}"
            svc_labels = svc["metadata"].get("labels", {})
            if not selects(m.get("spec", {}).get("selector", {}), svc_labels):
                fail(mwhere, f"does not select Service {svc['metadata']['name']}")
            job_label = m.get("spec", {}).get("jobLabel")
            job = svc_labels.get(job_label) if job_label else None
            if (job or svc["metadata"]["name"]) != "guardrail":
                fail(mwhere, f"Service {svc['metadata']['name']} would be scraped as job "
                             f"{job or svc['metadata']['name']!r}; the alerts expect 'guardrail' (jobLabel)")
        pdbs = [p for p, d in by_kind.get("PodDisruptionBudget", [])
                if selects(d.get("spec", {}).get("selector", {}), labels)]
        if len(pdbs) != 1:
            fail(rel(SCALED), f"expected one PodDisruptionBudget for the {stage} pods, found {len(pdbs)}")
    if mon:
        mpath, m = mon
        mwhere = f"{rel(mpath)} ServiceMonitor/{m['metadata']['name']}"
        if not any(e.get("port") == "metrics" and e.get("path", "/metrics") == "/metrics"
                   for e in m.get("spec", {}).get("endpoints", [])):
            fail(mwhere, "no endpoint scrapes port 'metrics' at /metrics")
        for s in sidecar_svc:
            if selects(m.get("spec", {}).get("selector", {}), s["metadata"].get("labels", {})):
                fail(mwhere, "also selects the sidecar's Service (scraped twice if they share a namespace)")


def adapter_metrics() -> dict[str, tuple[str, str]]:
    """External metric name -> (series name, metricsQuery) from the adapter's config."""
    doc = load_yaml(ADAPTER_CONFIG)
    out: dict[str, tuple[str, str]] = {}
    if not isinstance(doc, dict) or not doc.get("externalRules"):
        fail(rel(ADAPTER_CONFIG), "no externalRules")
        return out
    for i, r in enumerate(doc["externalRules"]):
        where = f"{rel(ADAPTER_CONFIG)} externalRules[{i}]"
        series = IDENT.match(str(r.get("seriesQuery", "")).strip("'\" "))
        name = (r.get("name") or {}).get("as")
        query = str(r.get("metricsQuery", ""))
        if not series or not name or "<<.Series>>" not in query or "<<.LabelMatchers>>" not in query:
            fail(where, "needs seriesQuery, name.as and a metricsQuery using <<.Series>> and <<.LabelMatchers>>")
            continue
        if (r.get("resources", {}).get("overrides", {}).get("namespace") or {}).get("resource") != "namespace":
            fail(where, "resources.overrides must map the namespace label (the HPA's namespace)")
        promql = query.replace("<<.LabelMatchers>>,", "").replace("<<.LabelMatchers>>", "")
        promql = promql.replace("<<.Series>>", series[0])
        check_expr(where, promql, set())
        out[name] = (series[0], promql)
    return out


def check_scaled_hpa(by_kind: dict, deps: dict[str, tuple[Path, dict]], cfg: dict | None) -> None:
    """The HPA scales guardrail-ingest on its consumer lag, within the partition count."""
    ingest = deps.get("ingest")
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    if ingest:
        ipath, idep = ingest
        if "replicas" in idep.get("spec", {}):
            fail(f"{rel(ipath)} Deployment/{idep['metadata']['name']}",
                 "spec.replicas is set; the HPA owns it (apply would reset the HPA's count)")
    targeting = [(p, h) for p, h in hpas if ingest and h.get("spec", {}).get("scaleTargetRef", {})
                 == {"apiVersion": "apps/v1", "kind": "Deployment", "name": ingest[1]["metadata"]["name"]}]
    if len(hpas) != 1 or len(targeting) != 1:
        fail(rel(SCALED), "expected one HorizontalPodAutoscaler, targeting the ingest Deployment (apps/v1)")
        return
    path, hpa = targeting[0]
    where = f"{rel(path)} HorizontalPodAutoscaler/{hpa['metadata']['name']}"
    spec = hpa.get("spec", {})
    if hpa.get("apiVersion") != "autoscaling/v2":
        fail(where, f"apiVersion is {hpa.get('apiVersion')!r}, expected autoscaling/v2")
    lo, hi = spec.get("minReplicas", 1), spec.get("maxReplicas", 0)
    if lo < 2:
        fail(where, "minReplicas must be >= 2 (one pod's restart must not stop the inputs)")
    if hi < lo:
        fail(where, "maxReplicas < minReplicas")
    stated = (hpa["metadata"].get("annotations") or {}).get("guardrail/input-partitions", "")
    if not str(stated).isdigit():
        fail(where, "annotation guardrail/input-partitions (the largest input topic's partitions) is missing")
    elif hi > int(stated):
        fail(where, f"maxReplicas {hi} exceeds the input partitions stated ({stated}): the extra pods would idle")
    window = seconds((cfg or {}).get("window", {}).get("size", "15m")) or 900
    down = spec.get("behavior", {}).get("scaleDown", {}).get("stabilizationWindowSeconds", 300)
    if down < window:
        fail(where, f"scaleDown.stabilizationWindowSeconds {down} is shorter than a window ({window:.0f}s); "
                    "every scale step is a rebalance")
    served = adapter_metrics()
    lag = []
    for m in spec.get("metrics", []):
        kind = m.get("type")
        name = (m.get(kind[:1].lower() + kind[1:] if kind else "", {}) or {}).get("metric", {}).get("name")
        if kind == "External" and name in served and served[name][0] == LAG_METRIC:
            lag.append(name)
        elif kind == "External" and name not in served:
            fail(where, f"External metric {name!r} is not served by {rel(ADAPTER_CONFIG)}")
    if not lag:
        fail(where, f"no External metric over {LAG_METRIC} from {rel(ADAPTER_CONFIG)}")


def check_scaled_kustomization(by_kind: dict) -> None:
    found = one(by_kind, "Kustomization", SCALED)
    if not found:
        return
    path, k = found
    listed = k.get("resources", [])
    for r in listed:
        if not (SCALED / r).exists():
            fail(rel(path), f"resource {r} does not exist")
    for f in sorted(SCALED.glob("*.yaml")):
        if f.name not in listed and f.name not in (path.name, ADAPTER_CONFIG.name):
            fail(rel(path), f"{f.name} is not a resource")
    if ADAPTER_CONFIG.name in listed:
        fail(rel(path), f"{ADAPTER_CONFIG.name} is prometheus-adapter's config, not a resource")
    if not k.get("namespace"):
        fail(rel(path), "no namespace")
    side = one(sidecar_manifests(), "Kustomization")
    images = k.get("images")
    if not images or any(not i.get("newTag") or i.get("newTag") == "latest" for i in images):
        fail(rel(path), "images must pin a tag")
    elif side and images != side[1].get("images"):
        fail(rel(path), f"images {images} differ from the sidecar kustomization's")


def check_scaled() -> None:
    by_kind = load_manifests(SCALED, skip=(ADAPTER_CONFIG.name,))
    check_scaled_kustomization(by_kind)
    deps = check_scaled_deployments(by_kind)
    pods = [d["spec"]["template"]["spec"] for _, d in deps.values()]
    cfg = check_scaled_policy(by_kind, pods)
    check_scaled_monitoring(by_kind, deps)
    check_scaled_hpa(by_kind, deps, cfg)
    judge = deps.get("judge")
    partitions = partials_partitions((cfg or {}).get("topics", {}).get("partials") or "guardrail-partials")
    if judge and partitions is not None:
        replicas = judge[1]["spec"].get("replicas", 1)
        where = f"{rel(judge[0])} Deployment/{judge[1]['metadata']['name']}"
        if not 2 <= replicas <= partitions:
            fail(where, f"replicas {replicas}: want 2 (one takes over at once) up to the "
                        f"partials topic's {partitions} partitions")


# ---------------------------------------------------------------- (b) PromQL

IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
SELECTOR = re.compile(r"\b(guardrail[A-Za-z0-9_:]*)\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def base_metric(name: str) -> str | None:
    """The exported metric behind a series name, or None if it is not exported."""
    if name in EXPORTED:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return None


def check_expr(where: str, expr: str, recorded: set[str]) -> None:
    """Every guardrail identifier exported (or recorded), selectors use real labels."""
    bare = STRING.sub('""', expr)
    used_metrics: set[str] = set()
    for ident in IDENT.findall(bare):
        if not ident.startswith("guardrail"):
            continue
        if ident in recorded:
            continue
        base = base_metric(ident)
        if base is None:
            fail(where, f"unknown metric {ident!r} in: {expr.strip()}")
        else:
            used_metrics.add(base)
    for name, matchers in SELECTOR.findall(bare):
        base = base_metric(name)
        if base is None:
            continue
        allowed = EXPORTED[base] | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
        for label in MATCHER_LABEL.findall(matchers):
            if label != "__name__" and label not in allowed:
                fail(where, f"{name} has no label {label!r}")
    if used_metrics and not recorded.intersection(IDENT.findall(bare)):
        allowed = set().union(*(EXPORTED[m] for m in used_metrics)) | TARGET_LABELS | {"le"}
        for group in GROUPING.findall(bare):
            for label in filter(None, (s.strip() for s in group.split(","))):
                if label not in allowed:
                    fail(where, f"grouping label {label!r} is not a label of {sorted(used_metrics)}")


def load_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        fail(rel(path), f"cannot read: {e}")
        return None


def check_rules() -> set[str]:
    doc = load_yaml(RULES)
    if not doc:
        return set()
    rules = [r for g in doc.get("groups", []) for r in g.get("rules", [])]
    recorded = {r["record"] for r in rules if "record" in r}
    for name in recorded:
        if not name.startswith("guardrail:"):
            fail(rel(RULES), f"recording rule {name!r} should be named guardrail:<metric>:<op>")
    alerts = set()
    for r in rules:
        where = f"{rel(RULES)} {r.get('alert') or r.get('record')}"
        check_expr(where, str(r.get("expr", "")), recorded)
        if "alert" in r:
            alerts.add(r["alert"])
            ann = r.get("annotations", {})
            for a in REQUIRED_ANNOTATIONS:
                if not str(ann.get(a, "")).strip():
                    fail(where, f"annotation {a!r} missing")
            if "\n" in str(ann.get("runbook", "")).strip():
                fail(where, "runbook must be one line")
            if "severity" not in r.get("labels", {}):
                fail(where, "label 'severity' missing")
    if missing := EXPECTED_ALERTS - alerts:
        fail(rel(RULES), f"alerts missing: {sorted(missing)}")
    check_rule_tests(alerts)
    return recorded


def check_rule_tests(alerts: set[str]) -> None:
    """Each alert has a firing and a not-firing case in the promtool tests."""
    doc = load_yaml(RULE_TESTS)
    if not doc:
        return
    firing, quiet = set(), set()
    for t in doc.get("tests", []):
        for case in t.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case.get("alertname"))
    for a in sorted(alerts):
        if a not in firing:
            fail(rel(RULE_TESTS), f"no test where {a} fires")
        if a not in quiet:
            fail(rel(RULE_TESTS), f"no test where {a} stays quiet")


def check_prometheus_config() -> None:
    doc = load_yaml(PROM_CONFIG)
    if not doc:
        return
    jobs = [s.get("job_name") for s in doc.get("scrape_configs", [])]
    if "guardrail" not in jobs:
        fail(rel(PROM_CONFIG), "no scrape job named 'guardrail' (GuardrailDown expects it)")
    for f in doc.get("rule_files", []):
        if not (PROM_CONFIG.parent / f).exists():
            fail(rel(PROM_CONFIG), f"rule file {f} does not exist")


def walk_exprs(node, path="$"):
    """(json path, PromQL) for every query in a dashboard (targets, annotations, variables)."""
    if isinstance(node, dict):
        for k, v in node.items():
            here = f"{path}.{k}"
            if k == "expr" and isinstance(v, str):
                yield here, v
            elif k in ("definition", "query") and isinstance(v, str) and "guardrail" in v:
                yield here, v
            else:
                yield from walk_exprs(v, here)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_exprs(v, f"{path}[{i}]")


def check_dashboard() -> None:
    try:
        dash = json.loads(DASHBOARD.read_text())
    except (OSError, json.JSONDecodeError) as e:
        fail(rel(DASHBOARD), f"cannot read: {e}")
        return
    exprs = list(walk_exprs(dash))
    if not exprs:
        fail(rel(DASHBOARD), "no PromQL expressions found")
    for where, expr in exprs:
        # Grafana macros and variables are not PromQL identifiers.
        check_expr(f"{rel(DASHBOARD)} {where}", re.sub(r"\$\{?\w+\}?", "x", expr), set())
    variables = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
    for v in ("DS_PROMETHEUS", "flag", "cohort"):
        if v not in variables:
            fail(rel(DASHBOARD), f"template variable {v!r} missing")
    text = DASHBOARD.read_text()
    for uid in re.findall(r'"uid":\s*"([^"]*)"', text):
        if uid not in ("${DS_PROMETHEUS}", "-- Grafana --", dash.get("uid")):
            fail(rel(DASHBOARD), f"hard-coded datasource uid {uid!r}; use ${{DS_PROMETHEUS}}")


def main() -> int:
    check_kubernetes()
    check_scaled()
    check_rules()
    check_prometheus_config()
    check_dashboard()
    if errors:
        print(f"check_deploy: {len(errors)} problem(s):", file=sys.stderr)
        for e in errors:
            print(f"  - {e}", file=sys.stderr)
        return 1
    print("check_deploy: OK (kubernetes manifests, scaled manifests, policy TOML, alert rules, "
          "rule tests, prometheus.yml, Grafana dashboard)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
