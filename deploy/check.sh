#!/usr/bin/env bash
# Static checks of deploy/ that need no Docker engine and no cluster.
# Prints one line per check ("ok", "WARN" or "FAIL") and exits non-zero if any
# check failed. Run from anywhere: deploy/check.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if ! command -v python3 >/dev/null 2>&1; then
  echo "FAIL python3 is required"
  exit 1
fi
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
  python3 -m pip install -q pyyaml >/dev/null 2>&1 || true
fi
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
  echo "FAIL PyYAML is missing and could not be installed (pip install pyyaml)"
  exit 1
fi

exec python3 - "$here" <<'PY'
import json, os, re, subprocess, sys
import yaml

deploy = sys.argv[1]
repo = os.path.dirname(deploy)
failed = False

def report(ok, name, why=""):
    global failed
    if ok is None:
        print(f"WARN {name}: {why}")
    elif ok:
        print(f"ok   {name}")
    else:
        failed = True
        print(f"FAIL {name}: {why}")

def rel(path):
    return os.path.relpath(path, repo)

def files(*exts):
    out = []
    for root, _, names in os.walk(deploy):
        out += [os.path.join(root, n) for n in sorted(names) if n.endswith(exts)]
    return sorted(out)

def load(path):
    with open(path) as f:
        return json.load(f) if path.endswith(".json") else list(yaml.safe_load_all(f))

# Every YAML and JSON file parses.
docs = {}
for path in files(".yml", ".yaml", ".json"):
    try:
        docs[rel(path)] = load(path)
        report(True, f"{rel(path)} parses")
    except Exception as e:
        report(False, f"{rel(path)} parses", str(e).splitlines()[0])

def doc(path, index=0):
    d = docs.get(path)
    if d is None:
        raise RuntimeError(f"{path} did not parse")
    return d if path.endswith(".json") else d[index]

def check(name, fn):
    try:
        why = fn()
        report(why is None, name, why or "")
    except Exception as e:
        report(False, name, f"{type(e).__name__}: {e}")

# Dockerfile: the agreed build command, and sources that exist.
dockerfile = open(os.path.join(deploy, "Dockerfile")).read()
def build_command():
    lines = [l.strip().rstrip("\\").strip() for l in dockerfile.splitlines()]
    builds = [l for l in lines if "cargo build" in l]
    want = "cargo build --release --locked -p warren"
    if builds != [want]:
        return f"want exactly one `{want}`, found {builds}"
check("Dockerfile builds with `cargo build --release --locked -p warren`", build_command)

# COPY sources outside the build stage's --from are read from the repo root.
joined = re.sub(r"\\\n", " ", dockerfile)
for m in re.finditer(r"^COPY\s+(.+)$", joined, re.M):
    args = [a for a in m.group(1).split() if not a.startswith("--")]
    if "--from=" in m.group(1):
        continue
    for src in args[:-1]:
        name = f"Dockerfile COPY source {src}"
        if os.path.exists(os.path.join(repo, src)):
            report(True, name + " exists")
        elif not src.startswith("deploy/"):
            # Owned outside deploy/: the image cannot be built until it exists.
            report(None, name, "missing; `docker build` fails until it is added")
        else:
            report(False, name, "missing")

# Compose: every relative path it names exists.
compose_path = "deploy/docker-compose.yml"
def compose_paths():
    c = doc(compose_path)
    missing = []
    for svc_name, svc in c["services"].items():
        build = svc.get("build")
        if build:
            ctx = os.path.normpath(os.path.join(deploy, build["context"]))
            if not os.path.isdir(ctx):
                missing.append(f"{svc_name}: build context {build['context']}")
            if not os.path.isfile(os.path.join(ctx, build.get("dockerfile", "Dockerfile"))):
                missing.append(f"{svc_name}: dockerfile {build.get('dockerfile')}")
        for v in svc.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith((".", "/")) and not os.path.exists(os.path.join(deploy, src)):
                missing.append(f"{svc_name}: {src}")
    return ", ".join(missing) or None
check("docker-compose.yml references existing files", compose_paths)

def mounts(service):
    c = doc(compose_path)
    return {v.split(":")[1]: os.path.normpath(os.path.join(deploy, v.split(":")[0]))
            for v in c["services"][service].get("volumes", []) if v.startswith(".")}

# RabbitMQ: the definitions path in rabbitmq.conf is where compose mounts them,
# the plugin list is well formed, and the user's hash matches the dev password.
def rabbit_wiring():
    conf = open(os.path.join(deploy, "rabbitmq/rabbitmq.conf")).read()
    m = re.search(r"^load_definitions\s*=\s*(\S+)", conf, re.M)
    if not m:
        return "rabbitmq.conf has no load_definitions"
    target = mounts("rabbitmq").get(m.group(1))
    if target != os.path.join(deploy, "rabbitmq/definitions.json"):
        return f"{m.group(1)} is not where compose mounts rabbitmq/definitions.json"
    plugins = open(os.path.join(deploy, "rabbitmq/enabled_plugins")).read()
    if not re.fullmatch(r"\[\s*[a-z_]+(\s*,\s*[a-z_]+)*\s*\]\.\s*", plugins):
        return "enabled_plugins is not an Erlang list term ending in '.'"
    if "rabbitmq_prometheus" not in plugins:
        return "rabbitmq_prometheus is not enabled"
check("RabbitMQ config, definitions and plugins are wired together", rabbit_wiring)

def password_hash():
    defs = doc("deploy/rabbitmq/definitions.json")
    users = {u["name"]: u for u in defs["users"]}
    if set(users) != {"warren"}:
        return f"expected only user warren, found {sorted(users)}"
    u = users["warren"]
    if u.get("hashing_algorithm") != "rabbit_password_hashing_sha256":
        return "hashing_algorithm is not rabbit_password_hashing_sha256"
    compose = open(os.path.join(deploy, "docker-compose.yml")).read()
    m = re.search(r"\$\{WARREN_AMQP_PASSWORD:-([^}]+)\}", compose)
    if not m:
        return "compose has no default WARREN_AMQP_PASSWORD"
    r = subprocess.run([sys.executable, os.path.join(deploy, "rabbitmq/password_hash.py"),
                        "--verify", u["password_hash"], m.group(1)])
    if r.returncode != 0:
        return "password_hash does not match the compose default password"
    perms = [p for p in defs["permissions"] if p["user"] == "warren"]
    if [p["vhost"] for p in perms] != ["warren"]:
        return "user warren should have permissions on vhost warren only"
check("definitions.json: user warren only, hash matches the compose password", password_hash)

# Grafana: provisioning points where compose mounts the dashboards, and the
# dashboard uses only the provisioned datasource and Warren's metric names.
def grafana_wiring():
    ds = doc("deploy/grafana/provisioning/datasources/prometheus.yml")["datasources"]
    if [(d["name"], d["uid"]) for d in ds] != [("Prometheus", "prometheus")]:
        return "expected one datasource Prometheus with uid prometheus"
    providers = doc("deploy/grafana/provisioning/dashboards/warren.yml")["providers"]
    m = mounts("grafana")
    for p in providers:
        if m.get(p["options"]["path"]) != os.path.join(deploy, "grafana/dashboards"):
            return f"{p['options']['path']} is not where compose mounts grafana/dashboards"
check("Grafana provisioning matches the compose mounts", grafana_wiring)

METRICS = {
    "warren_publish_total", "warren_publish_duration_seconds", "warren_deliveries_total",
    "warren_acks_total", "warren_nacks_total", "warren_dead_lettered_total",
    "warren_rpc_duration_seconds", "warren_retries_total", "warren_circuit_breaker_state",
    "warren_amqp_connections", "warren_amqp_channels", "warren_broker_up",
}
def dashboard():
    d = doc("deploy/grafana/dashboards/warren.json")
    text = json.dumps(d)
    if "${DS_" in text or "__inputs" in d:
        return "dashboard needs import-time datasource substitution"
    if d.get("schemaVersion") != 39:
        return f"schemaVersion is {d.get('schemaVersion')}, want 39"
    uids = set(re.findall(r'"type": "prometheus", "uid": "([^"]*)"', text))
    if uids != {"prometheus"}:
        return f"datasource uids {sorted(uids)}, want only prometheus"
    ids = [p["id"] for p in d["panels"]]
    if len(ids) != len(set(ids)):
        return "duplicate panel ids"
    exprs = " ".join(t["expr"] for p in d["panels"] for t in p.get("targets", []))
    used = {re.sub(r"_bucket$", "", n) for n in re.findall(r"\bwarren_[a-z_]+", exprs)}
    if used - METRICS:
        return f"unknown metrics {sorted(used - METRICS)}"
    if METRICS - used:
        return f"metrics not shown: {sorted(METRICS - used)}"
check("Grafana dashboard: provisioned datasource, Warren's metrics only and all of them", dashboard)

# Prometheus scrapes Warren and RabbitMQ where compose runs them.
def prometheus():
    p = doc("deploy/prometheus/prometheus.yml")
    targets = {t for j in p["scrape_configs"] for s in j["static_configs"] for t in s["targets"]}
    if not {"warren:5680", "rabbitmq:15692"} <= targets:
        return f"targets {sorted(targets)}"
check("Prometheus scrapes warren:5680 and rabbitmq:15692", prometheus)

# Kubernetes: Warren is a native sidecar and everything it refers to exists.
def kubernetes():
    objs = [o for o in docs["deploy/kubernetes/warren-sidecar.yaml"] if o]
    by_kind = {(o["kind"], o["metadata"]["name"]) for o in objs}
    dep = next(o for o in objs if o["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    warren = next((c for c in pod.get("initContainers", []) if c["name"] == "warren"), None)
    if warren is None or warren.get("restartPolicy") != "Always":
        return "no initContainer warren with restartPolicy: Always"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                        ("startupProbe", None)):
        if probe not in warren or (path and warren[probe]["httpGet"]["path"] != path):
            return f"warren {probe} missing or not {path}"
    sc = warren.get("securityContext", {})
    want = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
    if any(sc.get(k) != v for k, v in want.items()) or sc.get("capabilities", {}).get("drop") != ["ALL"]:
        return "warren securityContext is not locked down"
    for env in warren.get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref and ("Secret", ref["name"]) not in by_kind:
            return f"secret {ref['name']} is not defined"
    for vol in pod.get("volumes", []):
        if "configMap" not in vol:
            continue
        name = vol["configMap"]["name"]
        cm = next((o for o in objs if (o["kind"], o["metadata"]["name"]) == ("ConfigMap", name)), None)
        if cm is None:
            return f"configmap {name} is not defined"
        if "warren.toml" not in cm["data"]:
                return "configmap has no warren.toml"
        if re.search(r"^\s*url\s*=", cm["data"]["warren.toml"], re.M):
            return "warren.toml in the configmap must not carry amqp.url"
    if pod.get("terminationGracePeriodSeconds") != 30:
        return "terminationGracePeriodSeconds is not 30"
check("Kubernetes: Warren is a native sidecar with probes, limits and its Secret/ConfigMap", kubernetes)

sys.exit(1 if failed else 0)
PY
