#!/usr/bin/env python3
"""Static checks for guardrail's deploy/ artifacts.

    python3 deploy/check_deploy.py        # from anywhere; exit 0 = all checks passed

(a) Kubernetes manifests (deploy/kubernetes/*.yaml): the Deployment runs two
    containers and the guardrail one has the probes, port, resources and security
    context the README promises; the Service, ServiceMonitor, Secret and ConfigMap
    fit together; the policy TOML parses (alone and rendered with the Secret's
    [kafka.properties] fragment, exactly as the initContainer renders it).
(b) PromQL: every expression in the Grafana dashboard and the Prometheus rules
    names only metrics guardrail exports (SPEC section 8), with only their labels,
    and every alert has its annotations and a promtool unit test.

Needs Python >= 3.11 (tomllib) and PyYAML (`pip install pyyaml` if missing).
It does not run promtool; see README.md for the promtool commands.
"""

from __future__ import annotations

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


def load_manifests() -> dict[str, list[tuple[Path, dict]]]:
    """All documents under deploy/kubernetes, grouped by kind."""
    by_kind: dict[str, list[tuple[Path, dict]]] = {}
    files = sorted(K8S.glob("*.yaml")) + sorted(K8S.glob("*.yml"))
    if not files:
        fail(rel(K8S), "no YAML files found")
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


def one(by_kind: dict, kind: str) -> tuple[Path, dict] | None:
    found = by_kind.get(kind, [])
    if len(found) != 1:
        fail(rel(K8S), f"expected exactly one {kind}, found {len(found)}")
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
    cw = f"{where} container guardrail"
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
    return pod, c


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
    by_kind = load_manifests()
    found = one(by_kind, "Deployment")
    if not found:
        return
    pod, container = check_deployment(*found)
    pod_labels = found[1].get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    check_service_and_monitor(by_kind, pod_labels, container)
    check_configmap_and_secret(by_kind, pod)
    check_kustomization(by_kind)


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
    check_rules()
    check_prometheus_config()
    check_dashboard()
    if errors:
        print(f"check_deploy: {len(errors)} problem(s):", file=sys.stderr)
        for e in errors:
            print(f"  - {e}", file=sys.stderr)
        return 1
    print("check_deploy: OK (kubernetes manifests, policy TOML, alert rules, rule tests, "
          "prometheus.yml, Grafana dashboard)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
