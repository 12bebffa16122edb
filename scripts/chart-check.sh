#!/usr/bin/env bash
# Checks the Helm chart in deploy/helm/auditnorm without a cluster, a helm binary or Docker:
#
#   1. a Python venv in target/chart-venv with helm-python-sdk (Helm v4 as a library) and
#      kubernetes-validate, both from PyPI (pinned below);
#   2. for the default values, deploy/helm/values-kafka.yaml, deploy/helm/values-kinesis.yaml and
#      variants (Kafka and Kinesis inputs, outputs and dead letters; enhanced fan-out, at_timestamp,
#      file checkpoints on a StatefulSet, ...): the values schema, `helm lint --strict`, `helm template`, every rendered
#      manifest validated (strict: unknown fields are errors) against Kubernetes 1.31 and the newest
#      version kubernetes-validate knows, and the chart's own promises (probes on the metrics port,
#      hardened securityContext, grace period = drain timeout + margin, secrets only as ${VAR});
#   3. the auditnorm config rendered into the ConfigMap accepted by `auditnorm validate --config`
#      (every scenario, mapping-table overrides included), and redaction rule overrides by
#      `auditnorm replay`;
#   4. values that must be refused (typos, inline secrets, a weakened securityContext, ...).
#
# Usage: scripts/chart-check.sh
#   AUDITNORM_BIN               the auditnorm binary (default: target/debug/auditnorm, built with
#                               `cargo build --bin auditnorm` when that variable is not set)
#   CHART_CHECK_KUBE_VERSIONS   Kubernetes versions to validate against (default: "1.31 latest")
# Exit status: 0 when every check passed, 1 otherwise (every problem is listed first).
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_SDK=helm-python-sdk==0.2.2
KUBE_VALIDATE=kubernetes-validate==1.37.0
VENV=target/chart-venv
STAMP="$VENV/.chart-check-$HELM_SDK-$KUBE_VALIDATE"

say() { echo "chart-check: $*"; }
die() { echo "chart-check: error: $*" >&2; exit 1; }

# --- the venv -----------------------------------------------------------------------------------
command -v python3 >/dev/null || die "python3 is not installed (apt-get install python3 python3-venv)"
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' ||
  die "python3 >= 3.10 is needed by helm-python-sdk; found $(python3 --version 2>&1)"
if [ ! -f "$STAMP" ] || ! "$VENV/bin/python" -c 'import helm_python, kubernetes_validate' 2>/dev/null; then
  say "installing $HELM_SDK $KUBE_VALIDATE into $VENV"
  mkdir -p target
  python3 -m venv --clear "$VENV" ||
    die "cannot create a venv in $VENV (on Debian: apt-get install python3-venv)"
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    "$VENV/bin/python" -m pip install --quiet "$HELM_SDK" "$KUBE_VALIDATE" ||
    die "pip install $HELM_SDK $KUBE_VALIDATE failed (PyPI reachable?)"
  touch "$STAMP"
fi

# --- the auditnorm binary -----------------------------------------------------------------------
if [ -z "${AUDITNORM_BIN:-}" ]; then
  AUDITNORM_BIN=target/debug/auditnorm
  say "building $AUDITNORM_BIN (cargo build --bin auditnorm)"
  cargo build --quiet --bin auditnorm || die "cargo build --bin auditnorm failed"
fi
[ -x "$AUDITNORM_BIN" ] || die "AUDITNORM_BIN=$AUDITNORM_BIN is not an executable"
export AUDITNORM_BIN

# --- the checks ---------------------------------------------------------------------------------
exec "$VENV/bin/python" - <<'PYTHON'
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import helm_python as helm
import kubernetes_validate
import kubernetes_validate.utils as kv_utils
import jsonschema
import yaml

CHART = "deploy/helm/auditnorm"
BIN = os.path.abspath(os.environ["AUDITNORM_BIN"])
RELEASE, NAMESPACE = "auditnorm", "auditnorm"
KUBE_VERSIONS = [
    kv_utils.latest_version() if v == "latest" else v
    for v in os.environ.get("CHART_CHECK_KUBE_VERSIONS", "1.31 latest").split()
]
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
SECRET_NAME = re.compile(r"password|secret|^ssl\.key\.pem$")

problems = []


def problem(scenario, msg):
    problems.append(f"{scenario}: {msg}")
    print(f"  FAIL {msg}")


def ok(msg):
    print(f"  ok   {msg}")


def load_values(path):
    with open(path) as f:
        return helm.values_from_yaml(f.read()) or {}


def merge(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


with open("mappings/cloudtrail.toml") as f:
    CLOUDTRAIL_TABLE = f.read()
EXTRA_RULES = """# chart-check: an operator's rule file
disable = ["client_secret"]
[[rule]]
name = "vendor_token"
kind = "pattern"
anchors = ["vnd_"]
regex = 'vnd_[A-Za-z0-9]{32,}'
"""

KAFKA = load_values("deploy/helm/values-kafka.yaml")
KINESIS = load_values("deploy/helm/values-kinesis.yaml")

# name, values; `auditnorm validate` must accept every one's config
KINESIS_TO_KAFKA = merge(KINESIS, {  # Kinesis in, MSK out (SASL password from a Secret)
    "kafka": {"brokers": KAFKA["kafka"]["brokers"], "options": KAFKA["kafka"]["options"],
              "secretOptions": KAFKA["kafka"]["secretOptions"]},
    "output": {"type": "kafka", "kafka": {"topic": "ocsf-events"}},
    "deadLetter": {"type": "kafka", "kafka": {"topic": "auditnorm-dead-letters"}},
})
SCENARIOS = [
    ("default values", {}),
    ("values-kafka.yaml", KAFKA),
    ("values-kinesis.yaml (Kinesis in, Kinesis out, Kinesis dead letters, DynamoDB leases)",
     KINESIS),
    ("values-kafka.yaml + table and rule overrides, StatefulSet", merge(KAFKA, {
        "workload": {"kind": "StatefulSet"},
        "mappings": {"overrides": {"cloudtrail.toml": CLOUDTRAIL_TABLE}},
        "redaction": {"rules": {"extra.toml": EXTRA_RULES}, "keepRawDeadLetters": True},
        "podDisruptionBudget": {"minAvailable": "50%"},
    })),
    ("values-kinesis.yaml with Kafka output and dead letters", KINESIS_TO_KAFKA),
    ("values-kafka.yaml with Kinesis output and dead letters (names, regions, endpoint, linger)",
     merge(KAFKA, {
         "output": {"type": "kinesis", "kinesis": {
             "streamName": "ocsf-events", "region": "eu-west-1",
             "endpoint": "https://kinesis.eu-west-1.amazonaws.com", "linger": "50ms"}},
         "deadLetter": {"type": "kinesis", "kinesis": {
             "streamArn": "arn:aws:kinesis:eu-west-1:111122223333:stream/auditnorm-dead-letters",
             "linger": "5ms"}},
     })),
    ("values-kinesis.yaml + enhanced fan-out, stream by name and region, latest", merge(KINESIS, {
        "input": {"kinesis": {
            "streamArn": "", "streamName": "org-audit-logs", "region": "us-east-1",
            "startingPosition": "latest", "source": "cloudtrail", "enhancedFanOut": "auditnorm",
            "leaseDuration": "20s", "shardSyncInterval": "5m",
            "checkpoint": {"dynamodb": {"region": "us-west-2"}}}},
        "replicaCount": 4,
    })),
    ("values-kinesis.yaml + at_timestamp, LocalStack endpoints", merge(KINESIS, {
        "input": {"kinesis": {
            "endpoint": "http://localstack.test:4566", "startingPosition": "at_timestamp",
            "startingTimestamp": "2026-11-01T00:00:00Z", "pollInterval": "1s", "pollLimit": 500,
            "checkpoint": {"dynamodb": {"endpoint": "http://localstack.test:4566"}}}},
        "output": {"kinesis": {"endpoint": "http://localstack.test:4566"}},
        "deadLetter": {"type": "file", "file": "-"},
    })),
    ("values-kinesis.yaml + file checkpoints, StatefulSet", merge(KINESIS, {
        "workload": {"kind": "StatefulSet"},
        "replicaCount": 1,
        "input": {"kinesis": {"checkpoint": {"type": "file"}}},
    })),
    ("values-kinesis.yaml + file checkpoints, StatefulSet, own volume path and file name",
     merge(KINESIS, {
         "workload": {"kind": "StatefulSet", "persistence": {"mountPath": "/data/auditnorm/",
                                                             "size": "256Mi"}},
         "replicaCount": 1,
         "input": {"kinesis": {"checkpoint": {"type": "file", "file": {"name": "leases.json"}}}},
         "output": {"type": "file", "file": "-"},
         "deadLetter": {"type": "file", "file": "-"},
     })),
]
FILE_LEASES = {"workload": {"kind": "StatefulSet"}, "replicaCount": 1,
               "input": {"kinesis": {"checkpoint": {"type": "file"}}}}

# name, values, a text the refusal must contain
MUST_FAIL = [
    ("a top-level typo", {"replicaCont": 2}, "replicaCont"),
    ("a nested typo", {"input": {"kafka": {"topcs": []}}}, "topcs"),
    ("a Kafka password written inline", {"kafka": {"options": {"sasl.password": "hunter2"}}},
     "sasl.password"),
    ("a writable root file system", {"securityContext": {"readOnlyRootFilesystem": False}},
     "readOnlyRootFilesystem"),
    ("an unknown mapping table", {"mappings": {"overrides": {"cloudtrial.toml": "x"}}},
     "cloudtrial.toml"),
    ("a drain timeout written as a duration", {"pipeline": {"drainTimeoutSeconds": "30s"}},
     "drainTimeoutSeconds"),
    ("an unknown source", {"input": {"kafka": {"topics": [{"name": "t", "source": "clodtrail"}]}}},
     "topics/0/source"),
    ("an option both inline and from a Secret",
     {"kafka": {"options": {"sasl.username": "u"},
                "secretOptions": {"sasl.username": {"secretName": "s", "key": "k"}}}},
     "both options and secretOptions"),
    ("file checkpoints in a Deployment",
     merge(KINESIS, {"input": {"kinesis": {"checkpoint": {"type": "file"}}}}), "StatefulSet"),
    ("file checkpoints shared by two pods",
     merge(merge(KINESIS, FILE_LEASES), {"replicaCount": 2}), "set replicaCount 1"),
    ("a checkpoint file name with a directory",
     merge(merge(KINESIS, FILE_LEASES),
           {"input": {"kinesis": {"checkpoint": {"file": {"name": "sub/cp.json"}}}}}),
     "checkpoint/file/name"),
    ("the old checkpoint.file.dir value",
     merge(KINESIS, {"input": {"kinesis": {"checkpoint": {"file": {"dir": "/var/lib/auditnorm"}}}}}),
     "dir"),
    ("a Kinesis stream given twice",
     merge(KINESIS, {"input": {"kinesis": {"streamName": "org-audit-logs"}}}), "not both"),
    ("a Kinesis input without a stream",
     merge(KINESIS, {"input": {"kinesis": {"streamArn": ""}}}), "set streamName or streamArn"),
    ("a region that is not the stream ARN's",
     merge(KINESIS, {"input": {"kinesis": {"region": "eu-west-1"}}}), "differs from the streamArn"),
    ("a DynamoDB lease table not named",
     merge(KINESIS, {"input": {"kinesis": {"checkpoint": {"dynamodb": {"leaseTable": ""}}}}}),
     "leaseTable"),
    ("at_timestamp without a timestamp",
     merge(KINESIS, {"input": {"kinesis": {"startingPosition": "at_timestamp"}}}),
     "needs input.kinesis.startingTimestamp"),
    ("a timestamp without at_timestamp",
     merge(KINESIS, {"input": {"kinesis": {"startingTimestamp": "2026-11-01T00:00:00Z"}}}),
     "only used with startingPosition at_timestamp"),
    ("a timestamp that is not RFC 3339",
     merge(KINESIS, {"input": {"kinesis": {"startingPosition": "at_timestamp",
                                           "startingTimestamp": "2026-11-01 00:00"}}}),
     "startingTimestamp"),
    ("a poll limit above 10000", merge(KINESIS, {"input": {"kinesis": {"pollLimit": 20000}}}),
     "pollLimit"),
    ("an enhanced fan-out consumer name with a space",
     merge(KINESIS, {"input": {"kinesis": {"enhancedFanOut": "audit norm"}}}), "enhancedFanOut"),
    ("a lease duration under 300ms",
     merge(KINESIS, {"input": {"kinesis": {"leaseDuration": "100ms"}}}), "at least 300ms"),
    ("a Kinesis output without a stream",
     merge(KINESIS, {"output": {"kinesis": {"streamArn": ""}}}), "output.kinesis: set streamName"),
    ("output to the input stream",
     merge(KINESIS, {"output": {"kinesis": {
         "streamArn": "", "streamName": "org-audit-logs", "region": "us-east-1"}}}),
     "read its own writes"),
    ("dead letters to the output stream",
     merge(KINESIS, {"deadLetter": {"kinesis": {
         "streamArn": "arn:aws:kinesis:us-east-1:111122223333:stream/ocsf-events"}}}),
     "separate dead-letter stream"),
    ("a Kafka endpoint without brokers", {"kafka": {"brokers": []}}, "no brokers"),
    ("no redaction rules at all", {"redaction": {"builtinRules": False}}, "redaction.builtinRules"),
]

SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"],
                             "properties": {"matchLabels": {"type": "object", "minProperties": 1}}},
                "namespaceSelector": {"type": "object"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port", "path"], "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                        "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"},
                    }}},
            },
        },
    },
}


def render(chart, values):
    chart.validate_schema(values)
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return docs


def validate_manifests(scenario, docs):
    for path, doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("apiVersion") == "monitoring.coreos.com/v1" and doc.get("kind") == "ServiceMonitor":
            errs = sorted(jsonschema.Draft7Validator(SERVICE_MONITOR_SCHEMA).iter_errors(doc), key=str)
            for e in errs:
                problem(scenario, f"{name}: {'.'.join(map(str, e.path))}: {e.message}")
            if not errs:
                ok(f"{name}: a CRD kubernetes-validate has no schema for; checked its fields here")
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kv_utils.ValidationError as e:
                problem(scenario, f"{name} ({path}) is not valid Kubernetes {e.version}: "
                                  f"{'.'.join(map(str, e.path))}: {e.message}")
            except kv_utils.SchemaNotFoundError as e:
                problem(scenario, f"{name}: {e.message}")
    ok(f"{len(docs)} manifests valid (strict) for Kubernetes {', '.join(KUBE_VERSIONS)}")


def find(docs, *kinds):
    return [d for _, d in docs if d.get("kind") in kinds]


def check_promises(scenario, values, docs, config):
    """What the chart promises, read back from the rendered manifests."""
    bad = lambda msg: problem(scenario, msg)
    work = find(docs, "Deployment", "StatefulSet")
    if len(work) != 1:
        return bad(f"expected one Deployment or StatefulSet, found {len(work)}")
    work = work[0]
    if work["kind"] != values["workload"]["kind"]:
        bad(f"workload is a {work['kind']}, values say {values['workload']['kind']}")
    pod = work["spec"]["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == "auditnorm"]

    drain = int(values["pipeline"]["drainTimeoutSeconds"])
    margin = int(values["terminationGraceMarginSeconds"])
    if pod.get("terminationGracePeriodSeconds") != drain + margin:
        bad(f"terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds')} != "
            f"drain {drain} + margin {margin}")
    if config.get("pipeline", {}).get("drain_timeout") != f"{drain}s":
        bad(f"config drain_timeout {config.get('pipeline', {}).get('drain_timeout')!r} != '{drain}s'")

    psc, sc = pod.get("securityContext", {}), c.get("securityContext", {})
    for key, want in (("runAsNonRoot", True), ("readOnlyRootFilesystem", True),
                      ("allowPrivilegeEscalation", False)):
        if sc.get(key) is not want:
            bad(f"container securityContext.{key} is {sc.get(key)!r}, not {want}")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        bad("container securityContext does not drop ALL capabilities")
    if (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        bad("seccompProfile is not RuntimeDefault")
    if not isinstance(psc.get("runAsUser", 65532), int) or psc.get("runAsNonRoot") is not True:
        bad("pod securityContext does not run as a numeric non-root user")

    listen = config.get("metrics", {}).get("listen", "")
    port = int(listen.rsplit(":", 1)[1]) if ":" in listen else None
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if ports.get("metrics") != port:
        bad(f"container port 'metrics' {ports.get('metrics')} != config metrics.listen {listen!r}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                        ("startupProbe", "/healthz")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") != "metrics":
            bad(f"{probe} is {get}, expected {path} on port 'metrics'")
    svc = [s for s in find(docs, "Service") if s["metadata"]["name"].endswith("-metrics")]
    if not svc or svc[0]["spec"]["ports"][0]["port"] != port:
        bad("the metrics Service does not expose the metrics port")

    env = {e["name"]: e for e in c.get("env", [])}
    refs = set()

    def strings(node):
        if isinstance(node, dict):
            for v in node.values():
                strings(v)
        elif isinstance(node, list):
            for v in node:
                strings(v)
        elif isinstance(node, str):
            refs.update(ENV_REF.findall(node))
    strings(config)
    for var in sorted(refs):
        if var not in env:
            bad(f"the config reads ${{{var}}} but the container has no such env")
        elif "secretKeyRef" not in env[var].get("valueFrom", {}):
            bad(f"${{{var}}} does not come from a Secret")

    def walk(node, at=""):
        if isinstance(node, dict):
            for k, v in node.items():
                if SECRET_NAME.search(str(k)) and not (isinstance(v, str) and ENV_REF.fullmatch(v)):
                    bad(f"the ConfigMap holds a secret-looking value at {at}{k}")
                walk(v, f"{at}{k}.")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{at}{i}.")
    walk(config)
    hk = config.get("redaction", {}).get("hash_key_env")
    if hk and "secretKeyRef" not in env.get(hk, {}).get("valueFrom", {}):
        bad(f"redaction hash key env {hk} does not come from a Secret")

    args = c.get("args", [])
    cfg_path = args[args.index("--config") + 1] if "--config" in args else ""
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    if os.path.dirname(cfg_path) not in mounts:
        bad(f"--config {cfg_path} is not on a mounted volume")
    for dir_ in [config.get("mappings")] + [os.path.dirname(r) for r in
                                             config.get("redaction", {}).get("rules", [])]:
        if dir_ and dir_ not in mounts:
            bad(f"{dir_} (named in the config) is not mounted")
    data_mount = values["workload"]["persistence"]["mountPath"]
    if work["kind"] == "StatefulSet" and data_mount not in mounts:
        bad("the StatefulSet does not mount its volume")
    lease_file = config.get("input", {}).get("kinesis", {}).get("leases", {}).get("file")
    if lease_file is not None:
        if work["kind"] != "StatefulSet" or work["spec"]["replicas"] != 1:
            bad(f"file leases in a {work['kind']} of {work['spec']['replicas']} pod(s)")
        # auditnorm does not create the file's directory: it must be the volume's root.
        if os.path.dirname(lease_file) != data_mount.rstrip("/"):
            bad(f"the lease file {lease_file} is not at the root of the volume at {data_mount}")

    if not find(docs, "ServiceAccount") and values["serviceAccount"]["create"]:
        bad("no ServiceAccount")
    if values["podDisruptionBudget"]["enabled"] and not find(docs, "PodDisruptionBudget"):
        bad("no PodDisruptionBudget")
    if values["metrics"]["serviceMonitor"]["enabled"] and not find(docs, "ServiceMonitor"):
        bad("no ServiceMonitor")
    metrics_path = config.get("metrics", {}).get("path", "/metrics")
    for sm in find(docs, "ServiceMonitor"):
        paths = [e.get("path") for e in sm["spec"]["endpoints"]]
        if paths != [metrics_path]:
            bad(f"ServiceMonitor scrapes {paths}, the config serves metrics at {metrics_path!r}")
    ok("probes, ports, securityContext, grace period, volumes, Secret references as promised"
       + (f" ({', '.join(sorted(refs))} from Secrets)" if refs else ""))


def binary_config_keys():
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([BIN, "schema", "--dir", d], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"chart-check: error: {BIN} schema failed: {r.stderr}")
        with open(os.path.join(d, "config.schema.json")) as f:
            return set(json.load(f).get("properties", {}))


CONFIG_KEYS = binary_config_keys()


def container_env(docs):
    (work,) = find(docs, "Deployment", "StatefulSet")
    (c,) = [c for c in work["spec"]["template"]["spec"]["containers"] if c["name"] == "auditnorm"]
    env = dict(os.environ)
    for e in c.get("env", []):
        env[e["name"]] = e.get("value", "chart-check-placeholder-from-secret")
    return env


def check_config(scenario, cm, docs, data_mount):
    """`auditnorm validate` on the rendered config, in a directory laid out like the pod."""
    config = yaml.safe_load(cm["data"]["auditnorm.yaml"])
    env = container_env(docs)
    with tempfile.TemporaryDirectory(prefix="chart-check-") as root:
        etc = os.path.join(root, "etc/auditnorm")
        for sub in ("config", "redaction"):
            os.makedirs(os.path.join(etc, sub))
        data_mount = data_mount.rstrip("/")
        os.makedirs(root + data_mount, exist_ok=True)
        overrides = {k[len("mappings."):]: v for k, v in cm["data"].items() if k.startswith("mappings.")}
        if overrides:  # the ConfigMap is mounted over the image's /etc/auditnorm/mappings
            os.makedirs(os.path.join(etc, "mappings"))
            for name, text in overrides.items():
                with open(os.path.join(etc, "mappings", name), "w") as f:
                    f.write(text)
        else:  # the image's copy of the built-in tables
            shutil.copytree("mappings", os.path.join(etc, "mappings"))
        for key, text in cm["data"].items():
            if key.startswith("redaction."):
                with open(os.path.join(etc, "redaction", key[len("redaction."):]), "w") as f:
                    f.write(text)

        def rebase(node):
            if isinstance(node, dict):
                return {k: rebase(v) for k, v in node.items()}
            if isinstance(node, list):
                return [rebase(v) for v in node]
            if isinstance(node, str) and node.startswith(("/etc/auditnorm/", data_mount + "/")):
                return root + node
            return node
        local = rebase(config)

        # Redaction: `auditnorm replay`'s flags mirror the `run` keys: check them that way too.
        red = local.get("redaction")
        if red is not None:
            flags = {"enabled": None, "builtin_rules": None, "rules": None, "hash_key_env": None,
                     "keep_raw_dead_letters": None}
            unknown = set(red) - set(flags)
            if unknown:
                problem(scenario, f"redaction keys with no replay flag: {sorted(unknown)}")
            args = [BIN, "replay", "--no-progress", "--output", os.devnull, "--dlq", os.devnull]
            if red.get("enabled") is False:
                args.append("--no-redaction")
            if red.get("builtin_rules") is False:
                args.append("--no-builtin-redaction-rules")
            for r in red.get("rules", []):
                args += ["--redaction-rules", r]
            if red.get("hash_key_env"):
                args += ["--redaction-hash-key-env", red["hash_key_env"]]
            if red.get("keep_raw_dead_letters"):
                args.append("--keep-raw-dead-letters")
            args.append("-")
            r = subprocess.run(args, input="", capture_output=True, text=True, env=env)
            if r.returncode != 0:
                problem(scenario, f"the redaction settings are refused by `auditnorm replay`: {r.stderr.strip()}")
            else:
                ok(f"redaction settings accepted by `auditnorm replay` ({', '.join(sorted(red))})")

        path = os.path.join(etc, "config", "auditnorm.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(local, f, sort_keys=False)
        r = subprocess.run([BIN, "validate", "--config", path], capture_output=True, text=True, env=env)
        out = r.stderr.replace(root, "")
        if r.returncode == 0:
            ends = ", ".join(f"{k} {next(iter(config[k]))}" for k in ("input", "output", "dead_letter"))
            ok(f"`auditnorm validate --config` accepted the rendered config ({ends})"
               + (f" and {len(overrides)} mapping override(s)" if overrides else ""))
        else:
            problem(scenario, "`auditnorm validate --config` refused the rendered config:\n"
                    + "\n".join("         " + l for l in out.splitlines()))


print(f"chart-check: helm-python-sdk {helm.__version__} (Helm SDK {helm.helm_sdk_version()}), "
      f"kubernetes-validate {kubernetes_validate.__version__ if hasattr(kubernetes_validate, '__version__') else ''}"
      f", auditnorm {BIN}")
print(f"chart-check: auditnorm's config keys: {', '.join(sorted(CONFIG_KEYS))}")

with helm.Chart.load(CHART) as chart:
    for scenario, values in SCENARIOS:
        print(f"chart-check: {scenario}")
        try:
            report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSIONS[0]}.0"
                               if KUBE_VERSIONS[0].count(".") == 1 else f"v{KUBE_VERSIONS[0]}")
        except helm.HelmError as e:
            problem(scenario, f"helm lint could not run: {e}")
            continue
        findings = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        for m in findings:
            problem(scenario, f"helm lint: {m.get('path')}: {m.get('error')}")
        for e in report.get("errors", []):
            problem(scenario, f"helm lint: {e}")
        if not findings and not report.get("errors"):
            info = [m["error"] for m in report.get("messages", [])]
            ok("helm lint --strict" + (f" (info: {'; '.join(info)})" if info else ""))
        try:
            docs = render(chart, values)
        except helm.HelmError as e:
            problem(scenario, f"the chart does not render: {e}")
            continue
        ok("values schema and helm template: " + ", ".join(
            f"{d.get('kind')}/{d['metadata']['name']}" for _, d in docs))
        validate_manifests(scenario, docs)
        merged = chart.merge_values(values)
        cms = find(docs, "ConfigMap")
        if len(cms) != 1 or "auditnorm.yaml" not in cms[0].get("data", {}):
            problem(scenario, "no ConfigMap with auditnorm.yaml")
            continue
        config = yaml.safe_load(cms[0]["data"]["auditnorm.yaml"])
        check_promises(scenario, merged, docs, config)
        check_config(scenario, cms[0], docs, merged["workload"]["persistence"]["mountPath"])

    print("chart-check: values the chart must refuse")
    for name, values, needle in MUST_FAIL:
        try:
            render(chart, values)
        except helm.HelmError as e:
            msg = " ".join(str(e).split())
            if needle in msg:
                ok(f"refused {name}: {msg[:150]}")
            else:
                problem("must fail", f"{name}: refused, but the message does not name {needle!r}: {msg}")
            continue
        problem("must fail", f"{name}: accepted")

print()
if problems:
    print(f"chart-check: FAILED: {len(problems)} problem(s):", file=sys.stderr)
    for p in problems:
        print(f"  - {p}", file=sys.stderr)
    sys.exit(1)
print(f"chart-check: OK: {len(SCENARIOS)} value sets rendered, linted and validated; "
      f"{len(MUST_FAIL)} bad value sets refused")
PYTHON
