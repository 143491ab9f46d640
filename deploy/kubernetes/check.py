"""Renders every kustomize variant and overlay under deploy/kubernetes and checks what it renders.

Run by tests/kubernetes.rs with the test virtualenv's Python (scripts/setup.sh installs
kubernetes-validate there):

    python check.py --kubectl KUBECTL --regwatch REGWATCH

- Every object validates against the Kubernetes schemas, offline and strict (kubernetes-validate).
  The Prometheus Operator's objects have no schema there: the fields the operator needs are
  checked instead, and every regwatch metric an alert names must be one regwatch exports.
- Every pod template meets the restricted Pod Security Standard, with a read-only root filesystem.
- The probes, the container port, the Service and the ServiceMonitor agree with the
  `daemon.admin_listen` of the config the ConfigMap holds, and that config is mounted where the
  container's `--config` points.
- regwatch's own loader accepts the config (`regwatch check` exits 0 or 1, never 2: connections
  fail here, the config must not).

Prints one line per variant; exits 1 with every problem listed.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
VARIANTS = ["single-node", "cluster"] + sorted(
    f"overlays/{p.name}" for p in (HERE / "overlays").iterdir() if p.is_dir()
)
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
# The keys each cloud's workload identity reads, as the vendors document them: (kind, where, key,
# value or None for any). EKS IRSA, GKE Workload Identity, AKS workload identity.
IDENTITIES = {
    "overlays/cluster-aws": [("ServiceAccount", "annotation", "eks.amazonaws.com/role-arn", None)],
    "overlays/cluster-gcp": [
        ("ServiceAccount", "annotation", "iam.gke.io/gcp-service-account", None)
    ],
    "overlays/cluster-azure": [
        ("ServiceAccount", "annotation", "azure.workload.identity/client-id", None),
        ("pod", "label", "azure.workload.identity/use", "true"),
    ],
}
# Values the shipped configs' ${VAR}s expand to when regwatch checks them.
CONFIG_ENV = {"DOCKERHUB_USERNAME": "u", "DOCKERHUB_TOKEN": "t", "WEBHOOK_TOKEN": "w"}


def pod_spec(obj):
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def restricted(name, spec, problems):
    """The restricted Pod Security Standard (kubernetes.io/docs/concepts/security/pod-security-standards)."""
    pod = spec.get("securityContext", {})
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            problems.append(f"{name}: {host} is set")
    for volume in spec.get("volumes", []):
        if "hostPath" in volume:
            problems.append(f"{name}: volume {volume['name']} is a hostPath")
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    for c in containers:
        sc = c.get("securityContext", {})
        where = f"{name} container {c['name']}"
        if not sc.get("runAsNonRoot", pod.get("runAsNonRoot")):
            problems.append(f"{where}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod.get("runAsUser")) == 0:
            problems.append(f"{where}: runAsUser is 0")
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: capabilities do not drop ALL")
        if sc.get("capabilities", {}).get("add"):
            problems.append(f"{where}: adds capabilities")
        seccomp = sc.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile is {seccomp}, not RuntimeDefault")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: the root filesystem is writable")


def probe_port(probe, ports):
    port = probe.get("httpGet", {}).get("port")
    return ports.get(port, port)


def check_variant(variant, args, exported, problems):
    rendered = subprocess.run(
        [args.kubectl, "kustomize", str(HERE / variant)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    version = kubernetes_validate.latest_version()
    kinds = {}
    for obj in objects:
        name = f"{variant}: {obj['kind']}/{obj['metadata']['name']}"
        kinds.setdefault(obj["kind"], []).append(obj)
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            if obj["apiVersion"] != "monitoring.coreos.com/v1" or obj["kind"] not in (
                "ServiceMonitor",
                "PrometheusRule",
            ):
                problems.append(f"{name}: no schema to validate it against")
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{name}: {e.message} at {list(e.path)}")

    configs = {c["metadata"]["name"]: c for c in kinds.get("ConfigMap", [])}
    services = kinds.get("Service", [])
    workloads = [o for o in objects if o["kind"] in WORKLOADS]
    if not workloads:
        problems.append(f"{variant}: renders no workload")
    for w in workloads:
        name = f"{variant}: {w['kind']}/{w['metadata']['name']}"
        spec = pod_spec(w)
        restricted(name, spec, problems)
        c = spec["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        args_ = c.get("args", [])
        config_path = args_[args_.index("--config") + 1] if "--config" in args_ else None
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        if config_path is None:
            problems.append(f"{name}: no --config")
            continue
        directory, file = os.path.split(config_path)
        volume = volumes.get(mounts.get(directory, ""), {})
        config_map = configs.get(volume.get("configMap", {}).get("name"))
        if config_map is None or file not in config_map.get("data", {}):
            problems.append(f"{name}: --config {config_path} is not a key of a mounted ConfigMap")
            continue
        text = config_map["data"][file]
        try:
            config = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            problems.append(f"{name}: its config is not TOML: {e}")
            continue
        listen = config.get("daemon", {}).get("admin_listen", "127.0.0.1:9188")
        host, _, port = listen.rpartition(":")
        if host in ("127.0.0.1", "localhost", "[::1]"):
            problems.append(f"{name}: admin_listen {listen} is loopback: no probe reaches it")
        port = int(port)
        if ports.get("admin") != port:
            problems.append(f"{name}: containerPort admin {ports.get('admin')}, admin_listen {port}")
        for kind, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            probe = c.get(kind)
            if probe is None:
                problems.append(f"{name}: no {kind}")
                continue
            if probe.get("httpGet", {}).get("path") != path:
                problems.append(f"{name}: {kind} does not GET {path}")
            if probe_port(probe, ports) != port:
                problems.append(f"{name}: {kind} is not on admin_listen's port {port}")
        if "cluster" not in config and w["kind"] != "StatefulSet":
            problems.append(f"{name}: a single node needs a StatefulSet and its volume")
        if "cluster" not in config:
            state = config.get("daemon", {}).get("state_dir")
            if state not in mounts:
                problems.append(f"{name}: state_dir {state} is not a mounted volume")
        labels = w["spec"]["template"]["metadata"].get("labels", {})
        for pdb in kinds.get("PodDisruptionBudget", []):
            if not selects(pdb["spec"]["selector"], labels):
                problems.append(f"{name}: PodDisruptionBudget {pdb['metadata']['name']} does not select it")
            replicas = w["spec"].get("replicas", 1)
            allowed = pdb["spec"].get("maxUnavailable", replicas - pdb["spec"].get("minAvailable", replicas))
            if not 1 <= allowed < replicas:
                problems.append(f"{name}: PodDisruptionBudget lets {allowed} of {replicas} go at once")
        for kind, where, key, value in IDENTITIES.get(variant, []):
            if kind == "pod":
                found = labels.get(key)
            else:
                sa = next((o for o in kinds.get(kind, []) if o["metadata"]["name"] == spec.get("serviceAccountName")), None)
                found = (sa or {}).get("metadata", {}).get(f"{where}s", {}).get(key)
            if found is None or (value is not None and found != value):
                problems.append(f"{name}: {kind} {where} {key} is {found!r}, not {value or 'set'}")
        for svc in services:
            selector = svc["spec"].get("selector", {})
            if any(labels.get(k) != v for k, v in selector.items()):
                problems.append(f"{name}: Service {svc['metadata']['name']} does not select it")
            for p in svc["spec"]["ports"]:
                if ports.get(p.get("targetPort"), p.get("targetPort")) != port:
                    problems.append(f"{name}: Service port {p['name']} misses admin_listen")
        check_config(name, text, args.regwatch, problems)

    service_ports = {p["name"] for s in services for p in s["spec"]["ports"]}
    for monitor in kinds.get("ServiceMonitor", []):
        if not any(selects(monitor["spec"]["selector"], s["metadata"].get("labels", {})) for s in services):
            problems.append(f"{variant}: ServiceMonitor selects no Service")
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint.get("port") not in service_ports:
                problems.append(f"{variant}: ServiceMonitor port {endpoint.get('port')} is no Service port")
            if endpoint.get("path", "/metrics") != "/metrics":
                problems.append(f"{variant}: ServiceMonitor scrapes {endpoint.get('path')}")
    for rule in kinds.get("PrometheusRule", []):
        for group in rule["spec"]["groups"]:
            for r in group["rules"]:
                if "alert" not in r or "expr" not in r:
                    problems.append(f"{variant}: a rule without alert or expr: {r}")
                    continue
                if not balanced(r["expr"]):
                    problems.append(f"{variant}: alert {r['alert']} has unbalanced brackets")
                for metric in re.findall(r"\bregwatch_[a-z_]+", r["expr"]):
                    if metric not in exported:
                        problems.append(f"{variant}: alert {r['alert']} uses {metric}, which regwatch does not export")
    return len(objects), sorted(kinds)


def selects(selector, labels):
    """Whether a label selector (matchLabels only, as these manifests use) selects `labels`."""
    match = selector.get("matchLabels", {})
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def balanced(expr):
    depth = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for ch in re.sub(r'"[^"]*"', "", expr):
        if ch in "([{":
            depth.append(ch)
        elif ch in pairs and (not depth or depth.pop() != pairs[ch]):
            return False
    return not depth


def check_config(name, text, regwatch, problems):
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(text)
        f.flush()
        # Only what the config needs: never the caller's cloud credentials.
        env = dict(CONFIG_ENV, PATH="/usr/bin:/bin", HOME=tempfile.gettempdir())
        try:
            done = subprocess.run(
                [regwatch, "check", "-c", f.name],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
        except subprocess.TimeoutExpired:
            problems.append(f"{name}: regwatch check did not finish within 120 s")
            return
    if done.returncode not in (0, 1) or "config error" in done.stderr:
        problems.append(f"{name}: regwatch refuses its config: {done.stderr.strip()}")


def exported_metrics():
    """The sample names regwatch exposes: each metric src/metrics.rs registers, prefixed
    `regwatch_`, with the suffixes its type gives its samples (`_total` for a counter; `_bucket`,
    `_sum` and `_count` for a histogram). Read from the source: a family is exposed only once it
    has a sample, so a running daemon's /metrics would depend on what it did."""
    source = (HERE.parent.parent / "src" / "metrics.rs").read_text()
    types = dict(re.findall(r"^\s*pub (\w+): (.+),\s*$", source, re.M))
    names = set()
    for name, field in re.findall(r'register\(\s*"([a-z_]+)",\s*"[^"]*",\s*m\.(\w+)\.clone\(\)', source):
        kind = types.get(field, "")
        if "Counter" in kind:
            suffixes = ("_total",)
        elif "Histogram" in kind:
            suffixes = ("_bucket", "_sum", "_count")
        elif "Gauge" in kind:
            suffixes = ("",)
        else:
            sys.exit(f"metric {name}: unknown type of field {field} in src/metrics.rs")
        names.update(f"regwatch_{name}{suffix}" for suffix in suffixes)
    if not names:
        sys.exit("no metric registrations found in src/metrics.rs")
    return names


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubectl", required=True)
    parser.add_argument("--regwatch", required=True)
    args = parser.parse_args()
    exported = exported_metrics()
    problems = []
    for variant in VARIANTS:
        count, kinds = check_variant(variant, args, exported, problems)
        print(f"{variant}: {count} objects ({', '.join(kinds)})")
    for p in problems:
        print(f"PROBLEM {p}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
