"""Offline checks of fanout's Kubernetes manifests (deploy/kubernetes).

`cargo test -p fanout --test kubernetes` runs them (tests/e2e/kubernetes.rs,
with FANOUT_MANIFEST_TESTS_STRICT=1: a missing tool is then an error, not a
skip). By hand, from the repository root, with the workspace venv that
.ci/run makes from tests/python/requirements.txt:

    .venv/bin/python -m unittest discover -s deploy/kubernetes/tests -v

Needs kubectl (its built-in kustomize renders the overlays), PyYAML, and
kubernetes-validate (the official JSON schemas, offline) for the schema
checks. Run by hand, a missing tool skips the tests that need it, with the
reason printed. No API server is involved: this proves the manifests render,
match the schemas and keep the invariants below, not that a cluster runs
them. What the Rust test checks is not repeated here: that the generated/
folders are fresh, the image names, the command lines against the binary and
against the compose cluster.
"""

import copy
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import unittest
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the environment
    yaml = None

try:
    from kubernetes_validate import utils as kv
except ImportError:  # pragma: no cover - depends on the environment
    kv = None

HERE = Path(__file__).resolve().parent
KUBERNETES = HERE.parent

KUBECTL = shutil.which("kubectl")
STRICT = os.environ.get("FANOUT_MANIFEST_TESTS_STRICT") == "1"

CUSTOM_MERGER = "fanout/python-merger:0.1.0"
UID = 65532
CLUSTER_DOMAIN = "cluster.local"
# CoreDNS answers cluster names with this TTL (its default), and a pod's removal
# reaches CoreDNS within this long: with the root's --dns-refresh-ms, the longest a
# root may still pick a terminating leaf.
CLUSTER_DNS_TTL_S = 5
ENDPOINT_PROPAGATION_S = 2
# The servers' grace for calls in flight after the drain delay (the binary's).
SERVER_GRACE_S = 10
# Native sidecars (init containers with restartPolicy: Always) are on by default
# from Kubernetes 1.29.
MIN_VERSION = (1, 29)

OVERLAYS = {
    "small": {"shards": 2, "replicas": 2, "roots": 2, "production": False},
    "production": {"shards": 8, "replicas": 3, "roots": 3, "production": True},
}

HEALTH_SERVICES = {
    "leaf": {"", "fanout.v1.Leaf"},
    "root": {"", "fanout.search.v1.Search", "fanout.v1.Root"},
    "merger": {"", "fanout.v1.Merger"},
}

LEAF = {"app.kubernetes.io/name": "fanout", "app.kubernetes.io/component": "leaf"}
ROOT = {"app.kubernetes.io/name": "fanout", "app.kubernetes.io/component": "root"}
PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}


def skip_reason():
    if yaml is None:
        return "PyYAML is not installed (pip install pyyaml)"
    if KUBECTL is None:
        return "kubectl is not on PATH: cannot render the overlays"
    return None


def setUpModule():
    reasons = [r for r in [skip_reason()] if r]
    if kv is None:
        reasons.append("kubernetes-validate is not installed: schema checks skipped")
    if reasons and STRICT:
        raise RuntimeError("FANOUT_MANIFEST_TESTS_STRICT=1, but: " + "; ".join(reasons)
                           + " (.venv/bin/pip install -r tests/python/requirements.txt)")
    for reason in reasons:
        print(f"test_manifests: SKIPPING: {reason}", file=sys.stderr)


def needs_render(cls):
    reason = skip_reason()
    return unittest.skipIf(reason is not None, reason or "")(cls)


def kustomize(path):
    """The objects `kubectl kustomize PATH` renders, as dicts."""
    result = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.lru_cache(maxsize=None)
def rendered(overlay):
    return tuple(kustomize(KUBERNETES / "overlays" / overlay))


def custom_merger_overlay(tmp):
    """A copy of the small overlay whose one `images:` entry for the merger names
    CUSTOM_MERGER, as a user would swap in their own merger."""
    source = KUBERNETES / "overlays" / "small"
    kustomization = yaml.safe_load((source / "kustomization.yaml").read_text())
    # kustomize refuses absolute paths: point back at the overlay's folders relatively.
    kustomization["resources"] = [os.path.relpath((source / r).resolve(), tmp) for r in kustomization["resources"]]
    for entry in kustomization["images"]:
        if entry["name"] == "fanout-merger":
            name, tag = CUSTOM_MERGER.split(":")
            entry["newName"], entry["newTag"] = name, tag
    (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return Path(tmp)


# ---------------------------------------------------------------- helpers


def selects(selector, labels):
    """Whether a LabelSelector (or a Service's plain selector map) selects `labels`."""
    if selector is None:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def flag(args, name):
    """The value of `--name=value` or `--name value` in args, or None."""
    for position, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and position + 1 < len(args):
            return args[position + 1]
    return None


def workloads(objects):
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def all_containers(pod_spec):
    """(container, kind) with kind 'container', 'sidecar' or 'init'."""
    for container in pod_spec.get("initContainers") or []:
        yield container, "sidecar" if container.get("restartPolicy") == "Always" else "init"
    for container in pod_spec["containers"]:
        yield container, "container"


def root_dns_refresh_s(objects):
    """The root's --dns-refresh-ms, in seconds: it must be given, as the leaves'
    preStop and minReadySeconds are sized on it."""
    root = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "fanout-root")
    container = next(c for c in root["spec"]["template"]["spec"]["containers"] if c["name"] == "root")
    value = flag(container["args"], "dns-refresh-ms")
    assert value is not None, "the root must set --dns-refresh-ms"
    return int(value) / 1000


def dns_staleness_s(objects):
    """How long a root may still pick a leaf after its pod is deleted."""
    return root_dns_refresh_s(objects) + CLUSTER_DNS_TTL_S + ENDPOINT_PROPAGATION_S


def role(workload):
    return workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def container_role(workload, container):
    return "merger" if container["name"] == "merger" else role(workload)


def mounted_file(pod_spec, container, path):
    """(volume, mount) of the mount holding `path` in `container`, or (None, None)."""
    best = (None, None)
    for mount in container.get("volumeMounts") or []:
        mount_path = mount["mountPath"].rstrip("/")
        if path == mount_path or path.startswith(mount_path + "/"):
            if best[1] is None or len(mount_path) > len(best[1]["mountPath"]):
                volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
                best = (volume, mount)
    return best


DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# ---------------------------------------------------------------- invariants


class OverlayChecks:
    """Invariants of one rendered overlay (`overlay` names it)."""

    overlay = None

    @classmethod
    def setUpClass(cls):
        cls.objects = rendered(cls.overlay)
        cls.expect = OVERLAYS[cls.overlay]
        namespaces = [o for o in cls.objects if o["kind"] == "Namespace"]
        cls.namespace = namespaces[0]["metadata"]["name"] if namespaces else None

    def of_kind(self, kind):
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind, name):
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        self.assertEqual(len(found), 1, f"{kind}/{name}")
        return found[0]

    def leaves(self):
        return sorted(
            (s for s in self.of_kind("StatefulSet") if role(s) == "leaf"),
            key=lambda s: int(s["spec"]["template"]["metadata"]["labels"]["fanout/shard"]),
        )

    def root(self):
        return self.named("Deployment", "fanout-root")

    def pod_templates(self):
        """Every pod template's labels with its workload, plus other shapes of pod the
        policies must tell apart (a scraper, an unrelated pod)."""
        return [(w["spec"]["template"]["metadata"]["labels"], w) for w in workloads(self.objects)]

    # -- objects

    def test_objects_are_unique_and_in_the_namespace(self):
        self.assertEqual(self.namespace, "fanout")
        seen = set()
        for o in self.objects:
            key = (o["kind"], o["metadata"]["name"])
            self.assertNotIn(key, seen, "duplicate object")
            seen.add(key)
            if o["kind"] != "Namespace":
                self.assertEqual(o["metadata"].get("namespace"), self.namespace, key)
            self.assertRegex(o["metadata"]["name"], DNS_LABEL, key)
            for value in (o["metadata"].get("labels") or {}).values():
                self.assertRegex(value, LABEL_VALUE, key)
        namespace = self.named("Namespace", self.namespace)
        self.assertEqual(namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted")

    def test_workload_selectors_match_their_templates(self):
        for w in workloads(self.objects):
            labels = w["spec"]["template"]["metadata"]["labels"]
            self.assertTrue(selects(w["spec"]["selector"], labels), w["metadata"]["name"])

    # -- leaves

    def test_every_shard_is_a_statefulset_of_r_leaves(self):
        leaves = self.leaves()
        self.assertEqual([s["metadata"]["name"] for s in leaves],
                         [f"fanout-leaf-{i}" for i in range(self.expect["shards"])])
        for shard, s in enumerate(leaves):
            name = s["metadata"]["name"]
            spec = s["spec"]
            self.assertEqual(spec["replicas"], self.expect["replicas"], name)
            self.assertEqual(spec["serviceName"], name)
            self.assertEqual(spec["updateStrategy"]["type"], "RollingUpdate")
            self.assertGreater(spec["minReadySeconds"], dns_staleness_s(self.objects), name)
            pod = spec["template"]["spec"]
            leaf = next(c for c in pod["containers"] if c["name"] == "leaf")
            self.assertEqual(leaf["args"][0], "leaf")
            self.assertEqual(flag(leaf["args"], "shard-dir"), f"/index/shard-{shard}")
            self.assertEqual(flag(leaf["args"], "listen"), "0.0.0.0:7000")
            # Longer than the root's re-resolution, for a root whose last one failed.
            self.assertGreater(int(flag(leaf["args"], "drain-delay-ms")) / 1000, root_dns_refresh_s(self.objects))
            # The leaf needs /index/index.json and /index/shard-<i>/: an emptyDir at
            # /index that the init container fills with exactly those.
            volume, mount = mounted_file(pod, leaf, f"/index/shard-{shard}/global-stats.bin")
            self.assertIn("emptyDir", volume, name)
            self.assertEqual(mount["mountPath"], "/index")
            self.assertTrue(mount.get("readOnly"), name)
            copier = next(c for c, kind in all_containers(pod) if kind == "init")
            self.assertEqual(mounted_file(pod, copier, "/index/index.json")[0]["name"], volume["name"])
            # The index image's /fanout copies this shard, refusing an index of
            # another shard count; its entrypoint is /fanout, so args only.
            self.assertNotIn("command", copier, name)
            args = copier["args"]
            self.assertEqual(args[:2], ["deploy", "copy-shard"], name)
            self.assertEqual(flag(args, "from"), "/index-src")
            self.assertEqual(flag(args, "to"), mount["mountPath"])
            self.assertEqual(flag(args, "shard"), str(shard))
            self.assertEqual(flag(args, "shards"), str(self.expect["shards"]))

    def test_every_shard_has_a_headless_service_selecting_only_its_ready_replicas(self):
        templates = self.pod_templates()
        for s in self.leaves():
            name = s["metadata"]["name"]
            service = self.named("Service", name)["spec"]
            self.assertEqual(service["clusterIP"], "None", name)
            self.assertIs(service["publishNotReadyAddresses"], False, name)
            grpc = [p for p in service["ports"] if p["name"] == "grpc"]
            self.assertEqual(len(grpc), 1)
            self.assertEqual(grpc[0]["port"], 7000)
            leaf = s["spec"]["template"]["spec"]["containers"][0]
            target = [p for p in leaf["ports"] if p["name"] == grpc[0]["targetPort"]
                      or p["containerPort"] == grpc[0]["targetPort"]]
            self.assertEqual(target[0]["containerPort"], 7000)
            selected = [w["metadata"]["name"] for labels, w in templates if selects(service["selector"], labels)]
            self.assertEqual(selected, [name], "the Service must select this shard's pods only")

    def test_every_shard_and_the_root_have_a_disruption_budget(self):
        templates = self.pod_templates()
        for w in workloads(self.objects):
            name = w["metadata"]["name"]
            budget = self.named("PodDisruptionBudget", name)["spec"]
            self.assertEqual(budget["maxUnavailable"], 1, name)
            selected = [x["metadata"]["name"] for labels, x in templates if selects(budget["selector"], labels)]
            self.assertEqual(selected, [name])

    def test_replicas_spread_over_nodes(self):
        for w in workloads(self.objects):
            pod = w["spec"]["template"]
            constraints = pod["spec"]["topologySpreadConstraints"]
            by_node = [c for c in constraints if c["topologyKey"] == "kubernetes.io/hostname"]
            self.assertEqual(len(by_node), 1, w["metadata"]["name"])
            self.assertEqual(by_node[0]["maxSkew"], 1)
            self.assertTrue(selects(by_node[0]["labelSelector"], pod["metadata"]["labels"]))
            if role(w) == "leaf":
                self.assertEqual(by_node[0]["whenUnsatisfiable"], "DoNotSchedule")
                # Spread over this shard's replicas, not over every leaf.
                self.assertIn("fanout/shard", by_node[0]["labelSelector"]["matchLabels"])
            if self.expect["production"]:
                self.assertTrue(any(c["topologyKey"] == "topology.kubernetes.io/zone" for c in constraints))

    # -- root and merger

    def test_topology_names_exactly_the_shard_services(self):
        root = self.root()
        pod = root["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == "root")
        path = flag(container["args"], "topology")
        self.assertEqual(path, "/etc/fanout/topology.toml")
        volume, mount = mounted_file(pod, container, path)
        config_map = self.named("ConfigMap", volume["configMap"]["name"])
        key = mount.get("subPath") or path[len(mount["mountPath"]):].lstrip("/")
        topology = tomllib.loads(config_map["data"][key])
        shards = topology["shards"]
        self.assertEqual([s["id"] for s in shards], list(range(self.expect["shards"])))
        expected = []
        for s in self.leaves():
            name = s["metadata"]["name"]
            service = self.named("Service", name)
            port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
            expected.append([f"dns:{name}.{service['metadata']['namespace']}.svc.{CLUSTER_DOMAIN}:{port}"])
        self.assertEqual([s["replicas"] for s in shards], expected)

    def test_root_is_a_deployment_behind_a_clusterip_service(self):
        root = self.root()
        self.assertGreaterEqual(root["spec"]["replicas"], 2)
        self.assertEqual(root["spec"]["replicas"], self.expect["roots"])
        self.assertEqual(root["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0)
        service = self.named("Service", "fanout-root")["spec"]
        self.assertEqual(service.get("type", "ClusterIP"), "ClusterIP")
        self.assertNotEqual(service.get("clusterIP"), "None")
        grpc = next(p for p in service["ports"] if p["name"] == "grpc")
        self.assertEqual(grpc["port"], 50051)
        selected = [w["metadata"]["name"] for labels, w in self.pod_templates() if selects(service["selector"], labels)]
        self.assertEqual(selected, ["fanout-root"])
        container = next(c for c in root["spec"]["template"]["spec"]["containers"] if c["name"] == "root")
        args = container["args"]
        self.assertEqual(args[0], "root")
        self.assertEqual(flag(args, "listen"), "0.0.0.0:50051")
        self.assertEqual(flag(args, "merger"), "http://127.0.0.1:7100")
        self.assertEqual(flag(args, "merger-fallback"), "embedded")
        self.assertIsNotNone(flag(args, "drain-delay-ms"))

    def test_merger_is_a_native_sidecar_on_loopback(self):
        pod = self.root()["spec"]["template"]["spec"]
        sidecars = [c for c, kind in all_containers(pod) if kind == "sidecar"]
        self.assertEqual([c["name"] for c in sidecars], ["merger"])
        merger = sidecars[0]
        self.assertEqual(merger["restartPolicy"], "Always")
        self.assertEqual(merger["args"][0], "merger")
        self.assertEqual(flag(merger["args"], "listen"), "127.0.0.1:7100")
        self.assertNotIn("merger", [c["name"] for c in pod["containers"]])

    # -- containers

    def test_serving_containers_probe_grpc_health(self):
        for w in workloads(self.objects):
            pod = w["spec"]["template"]["spec"]
            for container, kind in all_containers(pod):
                where = f"{w['metadata']['name']}/{container['name']}"
                if kind == "init":
                    # Run-to-completion init containers may not have probes or hooks.
                    for field in ("startupProbe", "readinessProbe", "livenessProbe", "lifecycle"):
                        self.assertNotIn(field, container, where)
                    continue
                listen = flag(container["args"], "listen")
                self.assertIsNotNone(listen, where)
                port = listen.rsplit(":", 1)[1]
                for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                    probe = container.get(probe_name)
                    self.assertIsNotNone(probe, f"{where} has no {probe_name}")
                    command = probe["exec"]["command"]
                    self.assertEqual(command[:3], ["/fanout", "health", f"127.0.0.1:{port}"], where)
                    service = flag(command, "service") or ""
                    self.assertIn(service, HEALTH_SERVICES[container_role(w, container)], where)
                    self.assertLessEqual(probe["timeoutSeconds"], probe["periodSeconds"], where)
                    if self.expect["production"] and container_role(w, container) != "merger":
                        self.assertEqual(flag(command, "tls-ca"), "/etc/fanout/tls/ca.crt", where)
                # Readiness names the role's own service; liveness only the server.
                self.assertNotEqual(flag(container["readinessProbe"]["exec"]["command"], "service"), None, where)
                self.assertIsNone(flag(container["livenessProbe"]["exec"]["command"], "service"), where)
                # Liveness must not fire during a drain (health NOT_SERVING for
                # drain + grace after SIGTERM).
                live = container["livenessProbe"]
                self.assertGreater(live["periodSeconds"] * live["failureThreshold"], 5 + SERVER_GRACE_S, where)

    def test_containers_run_non_root_read_only_and_unprivileged(self):
        for w in workloads(self.objects):
            name = w["metadata"]["name"]
            pod = w["spec"]["template"]["spec"]
            self.assertIs(pod["automountServiceAccountToken"], False, name)
            # Every fanout flag has a FANOUT_* variable twin; service links would put
            # FANOUT_ROOT_PORT=tcp://... and the like into every container.
            self.assertIs(pod["enableServiceLinks"], False, name)
            for container, _ in all_containers(pod):
                self.assertFalse([e for e in container.get("env") or [] if e["name"].startswith("FANOUT_")],
                                 f"{name}/{container['name']}: configured by flags, not variables")
            account = self.named("ServiceAccount", pod["serviceAccountName"])
            self.assertIs(account["automountServiceAccountToken"], False)
            for host in ("hostNetwork", "hostPID", "hostIPC"):
                self.assertFalse(pod.get(host, False), name)
            context = pod["securityContext"]
            self.assertIs(context["runAsNonRoot"], True)
            self.assertEqual(context["runAsUser"], UID)
            self.assertEqual(context["fsGroup"], UID)
            self.assertEqual(context["seccompProfile"]["type"], "RuntimeDefault")
            for volume in pod["volumes"]:
                kinds = set(volume) - {"name"}
                self.assertLessEqual(kinds, {"emptyDir", "configMap", "secret", "projected"}, name)
            for container, _ in all_containers(pod):
                where = f"{name}/{container['name']}"
                context = container["securityContext"]
                self.assertIs(context["allowPrivilegeEscalation"], False, where)
                self.assertIs(context["readOnlyRootFilesystem"], True, where)
                self.assertIs(context["runAsNonRoot"], True, where)
                self.assertEqual(context["runAsUser"], UID, where)
                self.assertEqual(context["capabilities"]["drop"], ["ALL"], where)
                self.assertNotIn("add", context["capabilities"], where)
                self.assertFalse(context.get("privileged", False), where)
                self.assertEqual(context["seccompProfile"]["type"], "RuntimeDefault", where)
                self.assertEqual(container["imagePullPolicy"], "IfNotPresent", where)
                for port in container.get("ports") or []:
                    self.assertRegex(port["name"], PORT_NAME)
                    self.assertLessEqual(len(port["name"]), 15)
                self.assertTrue(any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
                                or container["name"] == "index", where)

    def test_resources(self):
        for w in workloads(self.objects):
            pod = w["spec"]["template"]["spec"]
            for container, _ in all_containers(pod):
                where = f"{w['metadata']['name']}/{container['name']}"
                resources = container["resources"]
                for resource in ("cpu", "memory"):
                    self.assertIn(resource, resources["requests"], where)
                self.assertIn("memory", resources["limits"], where)
                if self.expect["production"]:
                    # Guaranteed QoS: every container's cpu and memory limits equal
                    # its requests.
                    for resource in ("cpu", "memory"):
                        self.assertEqual(resources["limits"][resource], resources["requests"][resource], where)

    def test_termination_outlasts_dns_and_drain(self):
        for w in workloads(self.objects):
            pod = w["spec"]["template"]["spec"]
            for container in pod["containers"]:
                where = f"{w['metadata']['name']}/{container['name']}"
                sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
                drain = int(flag(container["args"], "drain-delay-ms")) / 1000
                self.assertGreater(pod["terminationGracePeriodSeconds"], sleep + drain + SERVER_GRACE_S, where)
                if role(w) == "leaf":
                    # A leaf must keep answering until every root has re-resolved its
                    # shard's name without it.
                    self.assertGreater(sleep, dns_staleness_s(self.objects), where)

    def test_prometheus_annotations_name_the_metrics_port(self):
        for w in workloads(self.objects):
            template = w["spec"]["template"]
            annotations = template["metadata"]["annotations"]
            main = template["spec"]["containers"][0]
            port = next(p["containerPort"] for p in main["ports"] if p["name"] == "metrics")
            self.assertEqual(annotations["prometheus.io/scrape"], "true")
            self.assertEqual(annotations["prometheus.io/port"], str(port))
            self.assertEqual(annotations["prometheus.io/path"], "/metrics")
            self.assertEqual(flag(main["args"], "metrics-listen"), f"0.0.0.0:{port}")

    def test_tls_and_tokens_come_from_secrets(self):
        expected = {
            "leaf": ["tls-cert", "tls-key", "tls-client-ca"],
            "root": ["tls-cert", "tls-key", "tls-ca", "auth-tokens"],
        }
        for w in workloads(self.objects):
            pod = w["spec"]["template"]["spec"]
            container = pod["containers"][0]
            where = w["metadata"]["name"]
            flags = {f: flag(container["args"], f) for f in expected[role(w)]}
            if not self.expect["production"]:
                self.assertEqual(set(flags.values()), {None}, where)
                continue
            for name, path in flags.items():
                self.assertIsNotNone(path, f"{where} lacks --{name}")
                volume, mount = mounted_file(pod, container, path)
                self.assertIsNotNone(volume, f"{where}: {path} is not mounted")
                self.assertIn("secret", volume, where)
                self.assertIn(volume["secret"]["defaultMode"], (0o400, 0o440), where)
                self.assertTrue(mount.get("readOnly"), where)

    # -- network policies

    def ingress(self, labels):
        """port -> list of peers (None: from anywhere) that may reach pods with `labels`."""
        policies = [p for p in self.of_kind("NetworkPolicy") if selects(p["spec"]["podSelector"], labels)]
        self.assertTrue(any("Ingress" in p["spec"]["policyTypes"] for p in policies), labels)
        allowed = {}
        for policy in policies:
            for rule in policy["spec"].get("ingress") or []:
                for port in rule.get("ports") or [{"port": None}]:
                    allowed.setdefault(port["port"], []).extend(rule.get("from") or [None])
        return allowed

    def egress(self, labels):
        policies = [p for p in self.of_kind("NetworkPolicy") if selects(p["spec"]["podSelector"], labels)]
        self.assertTrue(any("Egress" in p["spec"]["policyTypes"] for p in policies), labels)
        allowed = {}
        for policy in policies:
            for rule in policy["spec"].get("egress") or []:
                for port in rule.get("ports") or [{"port": None}]:
                    allowed.setdefault((port.get("protocol", "TCP"), port["port"]), []).extend(rule.get("to") or [None])
        return allowed

    def assert_scraper_only(self, peers):
        for peer in peers:
            self.assertIsNotNone(peer, "metrics must not be open to everyone")
            self.assertNotIn("ipBlock", peer)
            self.assertTrue(selects(peer["podSelector"], PROMETHEUS))
            self.assertFalse(selects(peer["podSelector"], {**ROOT, "app.kubernetes.io/part-of": "fanout"}))
            self.assertFalse(selects(peer["podSelector"], {"app": "anything-else"}))
            if self.expect["production"]:
                self.assertEqual(peer["namespaceSelector"],
                                 {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}})

    def test_only_roots_reach_leaves_and_only_the_scraper_reaches_metrics(self):
        for s in self.leaves():
            labels = s["spec"]["template"]["metadata"]["labels"]
            allowed = self.ingress(labels)
            self.assertEqual(set(allowed), {7000, 9100})
            for peer in allowed[7000]:
                self.assertIsNotNone(peer, "leaves must not be open to everyone")
                self.assertEqual(set(peer), {"podSelector"}, "same namespace only")
                root_labels = self.root()["spec"]["template"]["metadata"]["labels"]
                self.assertTrue(selects(peer["podSelector"], root_labels))
                self.assertFalse(selects(peer["podSelector"], labels))
            self.assert_scraper_only(allowed[9100])
            self.assertEqual(self.egress(labels), {}, "leaves need no egress")

    def test_root_is_open_to_clients_and_reaches_only_leaves_and_dns(self):
        labels = self.root()["spec"]["template"]["metadata"]["labels"]
        allowed = self.ingress(labels)
        self.assertEqual(set(allowed), {50051, 9100})
        self.assertIn(None, allowed[50051], "the public API is open to every client")
        self.assert_scraper_only(allowed[9100])
        egress = self.egress(labels)
        self.assertEqual(set(egress), {("TCP", 7000), ("UDP", 53), ("TCP", 53)})
        for peer in egress[("TCP", 7000)]:
            self.assertEqual(set(peer), {"podSelector"})
            for s in self.leaves():
                self.assertTrue(selects(peer["podSelector"], s["spec"]["template"]["metadata"]["labels"]))
            self.assertFalse(selects(peer["podSelector"], labels))


@needs_render
class SmallOverlay(OverlayChecks, unittest.TestCase):
    overlay = "small"


@needs_render
class ProductionOverlay(OverlayChecks, unittest.TestCase):
    overlay = "production"


# ---------------------------------------------------------------- images override


@needs_render
class CustomMerger(unittest.TestCase):
    def test_one_images_entry_swaps_the_merger_and_nothing_else(self):
        with tempfile.TemporaryDirectory() as tmp:
            objects = kustomize(custom_merger_overlay(tmp))
        swapped = {}
        for w in workloads(objects):
            for container, _ in all_containers(w["spec"]["template"]["spec"]):
                swapped[(w["metadata"]["name"], container["name"])] = container["image"]
        original = {}
        for w in workloads(rendered("small")):
            for container, _ in all_containers(w["spec"]["template"]["spec"]):
                original[(w["metadata"]["name"], container["name"])] = container["image"]
        self.assertEqual(swapped.pop(("fanout-root", "merger")), CUSTOM_MERGER)
        # Before the swap, the merger ran the root's image.
        self.assertEqual(original.pop(("fanout-root", "merger")), original[("fanout-root", "root")])
        self.assertEqual(swapped, original)


# ---------------------------------------------------------------- schemas


def validated_versions():
    """Every Kubernetes version kubernetes-validate ships from MIN_VERSION on."""
    versions = sorted({tuple(int(p) for p in v.split(".")[:2]) for v in kv.all_versions()})
    return [f"{major}.{minor}.0" for major, minor in versions if (major, minor) >= MIN_VERSION]


@needs_render
@unittest.skipIf(kv is None, "kubernetes-validate is not installed (pip install kubernetes-validate)")
class Schemas(unittest.TestCase):
    def test_versions_cover_native_sidecars(self):
        versions = validated_versions()
        print(f"\nkubernetes-validate {kv.__version__}: validating against {', '.join(versions)} "
              f"(oldest {versions[0]}, newest {versions[-1]})", file=sys.stderr)
        self.assertEqual(versions[0], "1.29.0")
        self.assertGreaterEqual(len(versions), 2)

    def test_every_object_validates_strictly(self):
        for overlay in OVERLAYS:
            for version in validated_versions():
                with self.subTest(overlay=overlay, version=version):
                    errors = []
                    for o in rendered(overlay):
                        try:
                            kv.validate(o, version, strict=True)
                        except kv.ValidationError as error:
                            errors.append(f"{o['kind']}/{o['metadata']['name']}: {error.message} at "
                                          f"{'/'.join(str(p) for p in error.absolute_path)}")
                        except kv.SchemaNotFoundError as error:
                            errors.append(error.message)
                    self.assertEqual(errors, [])

    def test_strict_mode_rejects_what_the_api_server_would(self):
        leaf = copy.deepcopy(next(o for o in rendered("small") if o["kind"] == "StatefulSet"))
        version = validated_versions()[-1]
        kv.validate(leaf, version, strict=True)
        misspelt = copy.deepcopy(leaf)
        misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
        with self.assertRaises(kv.ValidationError):
            kv.validate(misspelt, version, strict=True)
        wrong_type = copy.deepcopy(leaf)
        wrong_type["spec"]["replicas"] = "2"
        with self.assertRaises(kv.ValidationError):
            kv.validate(wrong_type, version, strict=True)


@unittest.skipIf(yaml is None, "PyYAML is not installed (pip install pyyaml)")
class OverlayLayout(unittest.TestCase):
    def test_overlays_include_their_generated_folder(self):
        for overlay in OVERLAYS:
            kustomization = yaml.safe_load((KUBERNETES / "overlays" / overlay / "kustomization.yaml").read_text())
            self.assertIn("generated", kustomization["resources"])
            self.assertIn("../../base", kustomization["resources"])

    def test_examples_parse_and_stay_out_of_the_overlays(self):
        examples = sorted((KUBERNETES / "examples").glob("*.yaml"))
        self.assertTrue(examples)
        kinds = set()
        for path in examples:
            for doc in yaml.safe_load_all(path.read_text()):
                self.assertIn("apiVersion", doc, path)
                self.assertEqual(doc["metadata"]["namespace"], "fanout", path)
                kinds.add(doc["kind"])
        self.assertIn("ServiceMonitor", kinds)
        if skip_reason() is None:
            for overlay in OVERLAYS:
                self.assertFalse(kinds & {o["kind"] for o in rendered(overlay)}, overlay)


if __name__ == "__main__":
    unittest.main()
