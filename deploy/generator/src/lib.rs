//! Renders the shard-dependent Kubernetes objects of a fanout deployment.
//!
//! A deployment of S shards x R replicas has, per shard `i`:
//!
//! - a StatefulSet `fanout-leaf-<i>` of R leaf pods; an init container
//!   (`fanout deploy copy-shard`) copies `index.json` and `shard-<i>/` from
//!   the index image (one image per index generation) into the pod's
//!   `emptyDir`, mounted read-only at `/index`;
//! - a headless Service `fanout-leaf-<i>` (`clusterIP: None`, only ready
//!   pods published), whose name resolves to the shard's ready replicas;
//! - a PodDisruptionBudget `fanout-leaf-<i>` (`maxUnavailable: 1`);
//!
//! and one topology file for the root listing every shard's DNS name
//! (`dns:fanout-leaf-<i>.<namespace>.svc.<cluster domain>:7000`).
//!
//! [`render`] returns three files meant for one folder (an overlay's
//! `generated/`): `shards.yaml` (the objects above), `topology.toml`, and a
//! `kustomization.yaml` that lists `shards.yaml` and turns `topology.toml`
//! into the ConfigMap `fanout-topology` (kustomize adds a hash of the content
//! to its name, so the root rolls out whenever the topology changes).
//! Everything shard-independent (the root Deployment and Service, the
//! NetworkPolicies) is hand-written in `deploy/kubernetes/base`.
//!
//! `fanout deploy kubernetes` is the command line over this crate; the
//! committed overlays are its [`presets`].
//!
//! The timings (probes, preStop, grace) follow the arithmetic in
//! `docs/kubernetes.md`; the constants below state it and are checked at
//! compile time.

mod yaml;

use yaml::{Node, int, str};

/// The image serving every role (`/fanout <role>`): what `deploy/build-image`
/// tags, `fanout/fanout:<workspace version>`.
pub const DEFAULT_IMAGE: &str = concat!("fanout/fanout:", env!("CARGO_PKG_VERSION"));
/// The index image: the fanout image (its `/fanout` does the copying, as
/// `fanout deploy copy-shard`) plus an index build under [`INDEX_IMAGE_DIR`]
/// (`deploy/kubernetes/images/index.Dockerfile`).
pub const DEFAULT_INDEX_IMAGE: &str = "fanout/index:g1";
/// Where the index image holds the build (`index.json`, `shard-<i>/`).
pub const INDEX_IMAGE_DIR: &str = "/index-src";
/// Where a leaf pod's copy of the index is mounted.
pub const INDEX_DIR: &str = "/index";
/// The leaves' gRPC port (named `grpc`).
pub const LEAF_PORT: u16 = 7000;
/// Every role's metrics port (named `metrics`).
pub const METRICS_PORT: u16 = 9100;
/// The user and group the image runs as.
pub const RUN_AS: i64 = 65532;
/// The prefix of the shard label (`fanout/shard: "<i>"`).
pub const SHARD_LABEL: &str = "fanout/shard";
/// Name of the ConfigMap holding `topology.toml` (before kustomize's hash).
pub const TOPOLOGY_CONFIG_MAP: &str = "fanout-topology";
/// Where TLS material is mounted (`tls.crt`, `tls.key`, `ca.crt`).
pub const TLS_DIR: &str = "/etc/fanout/tls";
/// The Secret with the leaves' TLS material, in TLS mode.
pub const LEAF_TLS_SECRET: &str = "fanout-leaf-tls";

/// How often the root re-resolves a shard's DNS name: the base's
/// `--dns-refresh-ms` of the root (the compose cluster's too).
pub const ROOT_DNS_REFRESH_S: u32 = 1;
/// The TTL CoreDNS gives cluster records (its `kubernetes` plugin default),
/// the longest a cached answer can outlive a change.
pub const CLUSTER_DNS_TTL_S: u32 = 5;
/// Time for a pod's removal to reach the EndpointSlices and CoreDNS; a
/// second is typical, two leaves room for a busy control plane.
pub const ENDPOINT_PROPAGATION_S: u32 = 2;
/// The leaf's drain delay: NOT_SERVING but still answering after SIGTERM
/// (the compose cluster's, where it must outlast the root's re-resolution).
/// Here the preStop sleep has already taken the leaf out of every root's
/// view; the delay covers a root whose last re-resolution failed.
pub const DRAIN_DELAY_MS: u32 = 2000;
/// The server's grace for calls in flight after the drain (the binary's).
pub const SERVER_GRACE_S: u32 = 10;
/// The leaf's preStop sleep: it keeps serving, still in no one's DNS answer,
/// until every root has re-resolved without it.
pub const LEAF_PRE_STOP_S: u32 = 15;
/// The leaf's terminationGracePeriodSeconds: preStop + drain + grace, with
/// room to spare before the kubelet's SIGKILL.
pub const LEAF_TERMINATION_GRACE_S: u32 = 45;
/// The StatefulSet's minReadySeconds: a new replica must have been ready
/// this long (every root has resolved it) before the next one is replaced.
pub const LEAF_MIN_READY_S: u32 = 15;

const WORST_CASE_DNS_STALENESS_S: u32 =
    ROOT_DNS_REFRESH_S + CLUSTER_DNS_TTL_S + ENDPOINT_PROPAGATION_S;
const _: () = assert!(LEAF_PRE_STOP_S > WORST_CASE_DNS_STALENESS_S);
const _: () = assert!(DRAIN_DELAY_MS > ROOT_DNS_REFRESH_S * 1000);
const _: () = assert!(LEAF_MIN_READY_S > WORST_CASE_DNS_STALENESS_S);
const _: () =
    assert!(LEAF_TERMINATION_GRACE_S > LEAF_PRE_STOP_S + DRAIN_DELAY_MS / 1000 + SERVER_GRACE_S);

/// Compute resources of one container: `(resource, quantity)` pairs such
/// as `("cpu", "500m")`, written in this order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub requests: Vec<(String, String)>,
    pub limits: Vec<(String, String)>,
}

impl Resources {
    /// No requests, no limits.
    pub fn new() -> Resources {
        Resources::default()
    }

    /// Adds a request.
    pub fn request(mut self, resource: &str, quantity: &str) -> Resources {
        self.requests
            .push((resource.to_owned(), quantity.to_owned()));
        self
    }

    /// Adds a limit.
    pub fn limit(mut self, resource: &str, quantity: &str) -> Resources {
        self.limits.push((resource.to_owned(), quantity.to_owned()));
        self
    }

    /// Requests equal to limits for each pair (the Guaranteed QoS class
    /// when every container of the pod has cpu and memory so).
    pub fn guaranteed(pairs: &[(&str, &str)]) -> Resources {
        pairs
            .iter()
            .fold(Resources::new(), |r, (k, v)| r.request(k, v).limit(k, v))
    }

    fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.limits.is_empty()
    }

    fn node(&self) -> Node {
        let pairs =
            |pairs: &[(String, String)]| Node::map(pairs.iter().map(|(k, v)| (k.clone(), str(v))));
        let mut entries = Vec::new();
        if !self.limits.is_empty() {
            entries.push(("limits", pairs(&self.limits)));
        }
        if !self.requests.is_empty() {
            entries.push(("requests", pairs(&self.requests)));
        }
        Node::map(entries)
    }
}

/// What to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesOptions {
    /// S: the number of shards (StatefulSets); the index must have as many.
    pub shards: u32,
    /// R: leaf pods per shard.
    pub replicas: u32,
    /// The namespace everything lives in (it is part of the shards' DNS names).
    pub namespace: String,
    /// The cluster's DNS domain (`cluster.local` unless the cluster says otherwise).
    pub cluster_domain: String,
    /// The fanout image.
    pub image: String,
    /// The index image of the generation to serve.
    pub index_image: String,
    /// The leaf container's resources.
    pub leaf_resources: Resources,
    /// The index-copying init container's resources.
    pub index_copy_resources: Resources,
    /// `sizeLimit` of the emptyDir holding the pod's copy of the index.
    pub index_size_limit: String,
    /// `--search-threads` of the leaf; `None` leaves the leaf's default (the
    /// cores it may use, which follows a CPU limit).
    pub search_threads: Option<u32>,
    /// Serve TLS with client certificates required (mTLS) from the Secret
    /// [`LEAF_TLS_SECRET`] mounted at [`TLS_DIR`].
    pub tls: bool,
    /// Also spread a shard's replicas over zones (best effort).
    pub zone_spread: bool,
}

impl KubernetesOptions {
    /// S shards x R replicas in `namespace`, with the defaults: the default
    /// images, small requests and no limits, no TLS.
    pub fn new(shards: u32, replicas: u32, namespace: &str) -> KubernetesOptions {
        KubernetesOptions {
            shards,
            replicas,
            namespace: namespace.to_owned(),
            cluster_domain: "cluster.local".to_owned(),
            image: DEFAULT_IMAGE.to_owned(),
            index_image: DEFAULT_INDEX_IMAGE.to_owned(),
            leaf_resources: Resources::new()
                .request("cpu", "250m")
                .request("memory", "256Mi")
                .limit("memory", "1Gi"),
            index_copy_resources: Resources::new()
                .request("cpu", "100m")
                .request("memory", "64Mi")
                .limit("memory", "256Mi"),
            index_size_limit: "2Gi".to_owned(),
            search_threads: None,
            tls: false,
            zone_spread: false,
        }
    }

    /// The preset `small`, which `overlays/small` commits: 2 shards x 2
    /// replicas, no TLS.
    pub fn small() -> KubernetesOptions {
        KubernetesOptions::new(2, 2, "fanout")
    }

    /// The preset `production`, which `overlays/production` commits: 8
    /// shards x 3 replicas, mTLS, Guaranteed resources, replicas spread over
    /// nodes and zones.
    pub fn production() -> KubernetesOptions {
        KubernetesOptions {
            leaf_resources: Resources::guaranteed(&[
                ("cpu", "4"),
                ("memory", "8Gi"),
                ("ephemeral-storage", "24Gi"),
            ]),
            index_copy_resources: Resources::guaranteed(&[
                ("cpu", "1"),
                ("memory", "512Mi"),
                ("ephemeral-storage", "1Gi"),
            ]),
            index_size_limit: "20Gi".to_owned(),
            search_threads: Some(4),
            tls: true,
            zone_spread: true,
            ..KubernetesOptions::new(8, 3, "fanout")
        }
    }

    /// Checks the options; [`render`] panics with this message when they are
    /// invalid.
    pub fn validate(&self) -> Result<(), String> {
        if self.shards == 0 || self.shards > 1000 {
            return Err(format!("shards must be in 1..=1000, not {}", self.shards));
        }
        if self.replicas == 0 || self.replicas > 100 {
            return Err(format!(
                "replicas must be in 1..=100, not {}",
                self.replicas
            ));
        }
        if !is_dns_label(&self.namespace) {
            return Err(format!(
                "namespace {:?} is not a DNS label (lower-case letters, digits and '-', at most 63)",
                self.namespace
            ));
        }
        if !self.cluster_domain.split('.').all(is_dns_label) {
            return Err(format!(
                "cluster domain {:?} is not a DNS name",
                self.cluster_domain
            ));
        }
        for (what, image) in [("image", &self.image), ("index image", &self.index_image)] {
            if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("{what} {image:?} is not an image reference"));
            }
        }
        if self.search_threads == Some(0) {
            return Err("search threads must be at least 1".to_owned());
        }
        if self.index_size_limit.is_empty() || !self.index_size_limit.chars().all(is_quantity_char)
        {
            return Err(format!(
                "index size limit {:?} is not a quantity",
                self.index_size_limit
            ));
        }
        for (container, resources) in [
            ("leaf", &self.leaf_resources),
            ("index copy", &self.index_copy_resources),
        ] {
            for (k, v) in resources.requests.iter().chain(&resources.limits) {
                let name_ok = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
                if !name_ok || v.is_empty() || !v.chars().all(is_quantity_char) {
                    return Err(format!("resource {k:?} = {v:?} is not a quantity"));
                }
            }
            // Every container has requests and a memory limit (a leaf over
            // its memory is killed, not its node).
            let has = |pairs: &[(String, String)], key: &str| pairs.iter().any(|(k, _)| k == key);
            for key in ["cpu", "memory"] {
                if !has(&resources.requests, key) {
                    return Err(format!("the {container} container needs a {key} request"));
                }
            }
            if !has(&resources.limits, "memory") {
                return Err(format!("the {container} container needs a memory limit"));
            }
        }
        Ok(())
    }

    /// The flags of `fanout deploy kubernetes` that render these options:
    /// `--preset NAME` for a preset, else every option that differs from
    /// [`KubernetesOptions::new`]'s defaults.
    pub fn command_line(&self) -> String {
        if let Some((name, _)) = presets().into_iter().find(|(_, preset)| preset == self) {
            return format!("--preset {name}");
        }
        let defaults = KubernetesOptions::new(self.shards, self.replicas, &self.namespace);
        let mut flags = vec![
            format!("--shards {}", self.shards),
            format!("--replicas {}", self.replicas),
            format!("--namespace {}", self.namespace),
        ];
        let mut differs = |flag: &str, value: &str, default: &str| {
            if value != default {
                flags.push(format!("{flag} {value}"));
            }
        };
        differs(
            "--cluster-domain",
            &self.cluster_domain,
            &defaults.cluster_domain,
        );
        differs("--image", &self.image, &defaults.image);
        differs("--index-image", &self.index_image, &defaults.index_image);
        differs(
            "--index-size-limit",
            &self.index_size_limit,
            &defaults.index_size_limit,
        );
        if let Some(threads) = self.search_threads {
            flags.push(format!("--search-threads {threads}"));
        }
        if self.tls {
            flags.push("--tls".to_owned());
        }
        if self.zone_spread {
            flags.push("--zone-spread".to_owned());
        }
        for (prefix, resources, default) in [
            ("--leaf", &self.leaf_resources, &defaults.leaf_resources),
            (
                "--copy",
                &self.index_copy_resources,
                &defaults.index_copy_resources,
            ),
        ] {
            if resources != default {
                for (k, v) in &resources.requests {
                    flags.push(format!("{prefix}-request {k}={v}"));
                }
                for (k, v) in &resources.limits {
                    flags.push(format!("{prefix}-limit {k}={v}"));
                }
            }
        }
        flags.join(" ")
    }

    /// The name of shard `shard`'s StatefulSet, headless Service and PDB.
    pub fn shard_name(&self, shard: u32) -> String {
        format!("fanout-leaf-{shard}")
    }

    /// The DNS name of shard `shard`'s headless Service.
    pub fn shard_dns_name(&self, shard: u32) -> String {
        format!(
            "{}.{}.svc.{}",
            self.shard_name(shard),
            self.namespace,
            self.cluster_domain
        )
    }
}

fn is_quantity_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '+' || c == '-'
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The files of one `generated/` folder, as `(file name, content)`:
/// `kustomization.yaml`, `shards.yaml` and `topology.toml`, in this order.
///
/// # Panics
/// When [`KubernetesOptions::validate`] refuses the options.
pub fn render(options: &KubernetesOptions) -> Vec<(String, String)> {
    if let Err(reason) = options.validate() {
        panic!("invalid Kubernetes options: {reason}");
    }
    vec![
        (
            "kustomization.yaml".to_owned(),
            render_kustomization(options),
        ),
        ("shards.yaml".to_owned(), render_shards(options)),
        ("topology.toml".to_owned(), render_topology(options)),
    ]
}

fn header(comment: &str, options: &KubernetesOptions) -> String {
    format!(
        "{comment} Rendered by `fanout deploy kubernetes {}` ({} shards x {} replicas, namespace {:?}).\n\
         {comment} Do not edit: regenerate with that command and `--out` this folder.\n",
        options.command_line(),
        options.shards,
        options.replicas,
        options.namespace
    )
}

fn render_kustomization(options: &KubernetesOptions) -> String {
    let doc = Node::map([
        ("apiVersion", str("kustomize.config.k8s.io/v1beta1")),
        ("kind", str("Kustomization")),
        ("namespace", str(&options.namespace)),
        ("resources", Node::strs(["shards.yaml"])),
        (
            "configMapGenerator",
            Node::seq([Node::map([
                ("name", str(TOPOLOGY_CONFIG_MAP)),
                ("files", Node::strs(["topology.toml"])),
                (
                    "options",
                    Node::map([("labels", labels(&[("app.kubernetes.io/component", "root")]))]),
                ),
            ])]),
        ),
    ]);
    header("#", options) + &yaml::to_string(&doc)
}

fn render_topology(options: &KubernetesOptions) -> String {
    let mut out = header("#", options);
    out.push_str(&format!(
        "# One DNS name per shard: its headless Service, resolving to the shard's ready replicas,\n\
         # re-resolved by the root every {ROOT_DNS_REFRESH_S} s (its --dns-refresh-ms).\n"
    ));
    for shard in 0..options.shards {
        out.push_str(&format!(
            "\n[[shards]]\nid = {shard}\nreplicas = [\"dns:{}:{LEAF_PORT}\"]\n",
            options.shard_dns_name(shard)
        ));
    }
    out
}

fn render_shards(options: &KubernetesOptions) -> String {
    let mut out = header("#", options);
    for shard in 0..options.shards {
        for doc in [
            headless_service(options, shard),
            stateful_set(options, shard),
            disruption_budget(options, shard),
        ] {
            out.push_str("---\n");
            out.push_str(&yaml::to_string(&doc));
        }
    }
    out
}

/// `app.kubernetes.io/name: fanout` plus `extra`.
fn labels(extra: &[(&str, &str)]) -> Node {
    let mut entries = vec![("app.kubernetes.io/name".to_owned(), str("fanout"))];
    entries.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), str(v))));
    Node::Map(entries)
}

fn shard_selector(shard: u32) -> Node {
    labels(&[
        ("app.kubernetes.io/component", "leaf"),
        (SHARD_LABEL, &shard.to_string()),
    ])
}

fn shard_labels(shard: u32) -> Node {
    labels(&[
        ("app.kubernetes.io/component", "leaf"),
        ("app.kubernetes.io/part-of", "fanout"),
        (SHARD_LABEL, &shard.to_string()),
    ])
}

fn metadata(options: &KubernetesOptions, shard: u32) -> Node {
    Node::map([
        ("name", str(&options.shard_name(shard))),
        ("namespace", str(&options.namespace)),
        ("labels", shard_labels(shard)),
    ])
}

fn headless_service(options: &KubernetesOptions, shard: u32) -> Node {
    Node::map([
        ("apiVersion", str("v1")),
        ("kind", str("Service")),
        ("metadata", metadata(options, shard)),
        (
            "spec",
            Node::map([
                ("clusterIP", str("None")),
                // Only ready replicas are in the DNS answer: a replica leaves
                // it when its readiness fails or its pod starts terminating.
                ("publishNotReadyAddresses", Node::Bool(false)),
                ("selector", shard_selector(shard)),
                (
                    "ports",
                    Node::seq([
                        service_port("grpc", LEAF_PORT),
                        service_port("metrics", METRICS_PORT),
                    ]),
                ),
            ]),
        ),
    ])
}

fn service_port(name: &str, port: u16) -> Node {
    Node::map([
        ("name", str(name)),
        ("port", int(port.into())),
        ("targetPort", str(name)),
        ("protocol", str("TCP")),
    ])
}

fn disruption_budget(options: &KubernetesOptions, shard: u32) -> Node {
    Node::map([
        ("apiVersion", str("policy/v1")),
        ("kind", str("PodDisruptionBudget")),
        ("metadata", metadata(options, shard)),
        (
            "spec",
            Node::map([
                ("maxUnavailable", int(1)),
                // A crash-looping replica must not block node drains.
                ("unhealthyPodEvictionPolicy", str("AlwaysAllow")),
                (
                    "selector",
                    Node::map([("matchLabels", shard_selector(shard))]),
                ),
            ]),
        ),
    ])
}

/// The container security context every container gets (the restricted
/// Pod Security Standard, plus a read-only root file system).
fn container_security_context() -> Node {
    Node::map([
        ("allowPrivilegeEscalation", Node::Bool(false)),
        ("readOnlyRootFilesystem", Node::Bool(true)),
        ("runAsNonRoot", Node::Bool(true)),
        ("runAsUser", int(RUN_AS)),
        ("runAsGroup", int(RUN_AS)),
        ("capabilities", Node::map([("drop", Node::strs(["ALL"]))])),
        (
            "seccompProfile",
            Node::map([("type", str("RuntimeDefault"))]),
        ),
    ])
}

fn pod_security_context() -> Node {
    Node::map([
        ("runAsNonRoot", Node::Bool(true)),
        ("runAsUser", int(RUN_AS)),
        ("runAsGroup", int(RUN_AS)),
        // Group of the emptyDir and of Secret files, so the non-root process
        // can read 0440 key files.
        ("fsGroup", int(RUN_AS)),
        (
            "seccompProfile",
            Node::map([("type", str("RuntimeDefault"))]),
        ),
    ])
}

/// `fanout health` against the local leaf, with the TLS client flags in TLS
/// mode (the leaf then requires a client certificate).
fn leaf_health(options: &KubernetesOptions, service: Option<&str>) -> Node {
    let mut command = vec![
        "/fanout".to_owned(),
        "health".to_owned(),
        format!("127.0.0.1:{LEAF_PORT}"),
    ];
    if let Some(service) = service {
        command.extend(["--service".to_owned(), service.to_owned()]);
    }
    if options.tls {
        command.extend([
            "--tls-ca".to_owned(),
            format!("{TLS_DIR}/ca.crt"),
            "--tls-cert".to_owned(),
            format!("{TLS_DIR}/tls.crt"),
            "--tls-key".to_owned(),
            format!("{TLS_DIR}/tls.key"),
        ]);
    }
    Node::map([("command", Node::strs(command))])
}

fn probe(exec: Node, period_s: i64, timeout_s: i64, failure_threshold: i64) -> Node {
    Node::map([
        ("exec", exec),
        ("periodSeconds", int(period_s)),
        ("timeoutSeconds", int(timeout_s)),
        ("failureThreshold", int(failure_threshold)),
    ])
}

/// The init container's arguments (the index image's entrypoint is
/// `/fanout`): copy `index.json` and this shard from the index image into
/// the emptyDir, refusing an image whose index has another shard count.
pub fn copy_shard_args(options: &KubernetesOptions, shard: u32) -> Vec<String> {
    vec![
        "deploy".to_owned(),
        "copy-shard".to_owned(),
        format!("--from={INDEX_IMAGE_DIR}"),
        format!("--to={INDEX_DIR}"),
        format!("--shard={shard}"),
        format!("--shards={}", options.shards),
    ]
}

fn stateful_set(options: &KubernetesOptions, shard: u32) -> Node {
    let name = options.shard_name(shard);
    let selector = || Node::map([("matchLabels", shard_selector(shard))]);

    let mut spread = vec![Node::map([
        ("maxSkew", int(1)),
        ("topologyKey", str("kubernetes.io/hostname")),
        ("whenUnsatisfiable", str("DoNotSchedule")),
        ("labelSelector", selector()),
    ])];
    if options.zone_spread {
        spread.push(Node::map([
            ("maxSkew", int(1)),
            ("topologyKey", str("topology.kubernetes.io/zone")),
            ("whenUnsatisfiable", str("ScheduleAnyway")),
            ("labelSelector", selector()),
        ]));
    }

    let mut args = vec![
        "leaf".to_owned(),
        format!("--shard-dir={INDEX_DIR}/shard-{shard}"),
        format!("--listen=0.0.0.0:{LEAF_PORT}"),
        format!("--metrics-listen=0.0.0.0:{METRICS_PORT}"),
        format!("--drain-delay-ms={DRAIN_DELAY_MS}"),
    ];
    if let Some(threads) = options.search_threads {
        args.push(format!("--search-threads={threads}"));
    }
    // A leaf calls no one: it serves TLS and requires a client certificate
    // from ca.crt (docs/security.md).
    if options.tls {
        args.extend([
            format!("--tls-cert={TLS_DIR}/tls.crt"),
            format!("--tls-key={TLS_DIR}/tls.key"),
            format!("--tls-client-ca={TLS_DIR}/ca.crt"),
        ]);
    }

    let mut leaf_mounts = vec![
        Node::map([
            ("name", str("index")),
            ("mountPath", str(INDEX_DIR)),
            ("readOnly", Node::Bool(true)),
        ]),
        Node::map([("name", str("tmp")), ("mountPath", str("/tmp"))]),
    ];
    let mut volumes = vec![
        Node::map([
            ("name", str("index")),
            (
                "emptyDir",
                Node::map([("sizeLimit", str(&options.index_size_limit))]),
            ),
        ]),
        Node::map([
            ("name", str("tmp")),
            ("emptyDir", Node::map([("sizeLimit", str("64Mi"))])),
        ]),
    ];
    if options.tls {
        leaf_mounts.push(Node::map([
            ("name", str("tls")),
            ("mountPath", str(TLS_DIR)),
            ("readOnly", Node::Bool(true)),
        ]));
        volumes.push(Node::map([
            ("name", str("tls")),
            (
                "secret",
                Node::map([
                    ("secretName", str(LEAF_TLS_SECRET)),
                    // 0440: owner root, group fsGroup (65532); the key is
                    // readable by the leaf's group and no one else.
                    ("defaultMode", int(0o440)),
                ]),
            ),
        ]));
    }

    let mut index_copy = vec![
        ("name", str("index")),
        ("image", str(&options.index_image)),
        ("imagePullPolicy", str("IfNotPresent")),
        ("args", Node::strs(copy_shard_args(options, shard))),
    ];
    if !options.index_copy_resources.is_empty() {
        index_copy.push(("resources", options.index_copy_resources.node()));
    }
    index_copy.push(("securityContext", container_security_context()));
    index_copy.push((
        "volumeMounts",
        Node::seq([Node::map([
            ("name", str("index")),
            ("mountPath", str(INDEX_DIR)),
        ])]),
    ));

    let mut leaf = vec![
        ("name", str("leaf")),
        ("image", str(&options.image)),
        ("imagePullPolicy", str("IfNotPresent")),
        ("args", Node::strs(args)),
        (
            "ports",
            Node::seq([
                container_port("grpc", LEAF_PORT),
                container_port("metrics", METRICS_PORT),
            ]),
        ),
        // While the index opens: up to 5 minutes (150 x 2 s) before the
        // kubelet gives up; readiness and liveness start after it succeeds.
        (
            "startupProbe",
            probe(leaf_health(options, Some("fanout.v1.Leaf")), 2, 2, 150),
        ),
        // In the shard's DNS answer only while SERVING; two misses (10 s) take
        // the replica out (the root also fails over on its own).
        (
            "readinessProbe",
            probe(leaf_health(options, Some("fanout.v1.Leaf")), 5, 2, 2),
        ),
        // Restart only a process that stops answering at all for 30 s: longer
        // than the drain after SIGTERM (5 s + 10 s), when health is NOT_SERVING.
        ("livenessProbe", probe(leaf_health(options, None), 10, 3, 3)),
        (
            "lifecycle",
            Node::map([(
                "preStop",
                Node::map([(
                    "sleep",
                    Node::map([("seconds", int(LEAF_PRE_STOP_S.into()))]),
                )]),
            )]),
        ),
    ];
    if !options.leaf_resources.is_empty() {
        leaf.push(("resources", options.leaf_resources.node()));
    }
    leaf.push(("securityContext", container_security_context()));
    leaf.push(("volumeMounts", Node::seq(leaf_mounts)));

    let pod_spec = Node::map([
        ("serviceAccountName", str("fanout-leaf")),
        ("automountServiceAccountToken", Node::Bool(false)),
        ("enableServiceLinks", Node::Bool(false)),
        (
            "terminationGracePeriodSeconds",
            int(LEAF_TERMINATION_GRACE_S.into()),
        ),
        ("securityContext", pod_security_context()),
        ("topologySpreadConstraints", Node::seq(spread)),
        ("initContainers", Node::seq([Node::map(index_copy)])),
        ("containers", Node::seq([Node::map(leaf)])),
        ("volumes", Node::seq(volumes)),
    ]);

    Node::map([
        ("apiVersion", str("apps/v1")),
        ("kind", str("StatefulSet")),
        ("metadata", metadata(options, shard)),
        (
            "spec",
            Node::map([
                ("serviceName", str(&name)),
                ("replicas", int(options.replicas.into())),
                // Replicas are interchangeable: start and stop them together
                // (rolling updates still go one pod at a time).
                ("podManagementPolicy", str("Parallel")),
                ("minReadySeconds", int(LEAF_MIN_READY_S.into())),
                ("revisionHistoryLimit", int(5)),
                (
                    "updateStrategy",
                    Node::map([("type", str("RollingUpdate"))]),
                ),
                ("selector", selector()),
                (
                    "template",
                    Node::map([
                        (
                            "metadata",
                            Node::map([
                                ("labels", shard_labels(shard)),
                                (
                                    "annotations",
                                    Node::map([
                                        ("kubectl.kubernetes.io/default-container", str("leaf")),
                                        ("prometheus.io/scrape", str("true")),
                                        ("prometheus.io/port", str(&METRICS_PORT.to_string())),
                                        ("prometheus.io/path", str("/metrics")),
                                    ]),
                                ),
                            ]),
                        ),
                        ("spec", pod_spec),
                    ]),
                ),
            ]),
        ),
    ])
}

fn container_port(name: &str, port: u16) -> Node {
    Node::map([
        ("name", str(name)),
        ("containerPort", int(port.into())),
        ("protocol", str("TCP")),
    ])
}

/// The presets of `fanout deploy kubernetes --preset NAME`, by name: each
/// is also the overlay under `deploy/kubernetes/overlays/` whose
/// `generated/` folder is committed.
pub fn presets() -> Vec<(&'static str, KubernetesOptions)> {
    vec![
        ("small", KubernetesOptions::small()),
        ("production", KubernetesOptions::production()),
    ]
}

/// The preset called `name`.
pub fn preset(name: &str) -> Option<KubernetesOptions> {
    presets()
        .into_iter()
        .find(|(preset, _)| *preset == name)
        .map(|(_, options)| options)
}

/// How the folder `dir` differs from `files` (a [`render`]): one line per
/// missing, different or extra file; empty when `dir` is fresh.
pub fn differences(dir: &std::path::Path, files: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, content) in files {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Err(error) => problems.push(format!("{}: cannot read ({error})", path.display())),
            Ok(committed) if committed != *content => {
                let line = committed
                    .lines()
                    .zip(content.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or_else(|| committed.lines().count().min(content.lines().count()));
                problems.push(format!(
                    "{}: differs from a fresh render from line {}",
                    path.display(),
                    line + 1
                ));
            }
            Ok(_) => {}
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut extra: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| !files.iter().any(|(n, _)| n == name))
            .collect();
        extra.sort();
        for name in extra {
            problems.push(format!(
                "{}: not rendered by the generator",
                dir.join(name).display()
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file<'a>(files: &'a [(String, String)], name: &str) -> &'a str {
        &files.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn renders_one_statefulset_service_and_budget_per_shard() {
        let options = KubernetesOptions::new(3, 2, "search");
        let files = render(&options);
        let names: Vec<_> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["kustomization.yaml", "shards.yaml", "topology.toml"]
        );
        let shards = file(&files, "shards.yaml");
        assert_eq!(shards.matches("\nkind: StatefulSet\n").count(), 3);
        assert_eq!(shards.matches("\nkind: Service\n").count(), 3);
        assert_eq!(shards.matches("\nkind: PodDisruptionBudget\n").count(), 3);
        assert_eq!(shards.matches("\n---\n").count(), 9);
        for shard in 0..3 {
            assert!(shards.contains(&format!("  name: fanout-leaf-{shard}\n")));
            assert!(shards.contains(&format!("  serviceName: fanout-leaf-{shard}\n")));
            assert!(shards.contains(&format!("- --shard-dir=/index/shard-{shard}\n")));
            assert!(shards.contains(&format!("- --shard={shard}\n        - --shards=3\n")));
            assert!(shards.contains(&format!("    fanout/shard: \"{shard}\"\n")));
        }
        assert!(!shards.contains("fanout-leaf-3"));
        assert!(shards.contains("  clusterIP: None\n  publishNotReadyAddresses: false\n"));
        assert!(shards.contains("  replicas: 2\n"));
        assert!(shards.contains("  namespace: search\n"));
        assert!(shards.contains("  maxUnavailable: 1\n"));
    }

    #[test]
    fn topology_names_every_shard_service() {
        let mut options = KubernetesOptions::new(3, 1, "search");
        options.cluster_domain = "corp.example".to_owned();
        let files = render(&options);
        let topology = file(&files, "topology.toml");
        let replicas: Vec<_> = topology
            .lines()
            .filter(|l| l.starts_with("replicas = "))
            .collect();
        assert_eq!(
            replicas,
            [
                "replicas = [\"dns:fanout-leaf-0.search.svc.corp.example:7000\"]",
                "replicas = [\"dns:fanout-leaf-1.search.svc.corp.example:7000\"]",
                "replicas = [\"dns:fanout-leaf-2.search.svc.corp.example:7000\"]",
            ]
        );
        let ids: Vec<_> = topology
            .lines()
            .filter(|l| l.starts_with("id = "))
            .collect();
        assert_eq!(ids, ["id = 0", "id = 1", "id = 2"]);
        assert_eq!(topology.matches("[[shards]]").count(), 3);
        let kustomization = file(&files, "kustomization.yaml");
        assert!(kustomization.contains("- name: fanout-topology\n  files:\n  - topology.toml\n"));
        assert!(kustomization.contains("namespace: search\n"));
    }

    #[test]
    fn tls_adds_flags_secret_and_probe_credentials() {
        let plain = render(&KubernetesOptions::small());
        assert!(!file(&plain, "shards.yaml").contains("tls"));
        let files = render(&KubernetesOptions::production());
        let shards = file(&files, "shards.yaml");
        for flag in [
            "- --tls-cert=/etc/fanout/tls/tls.crt\n",
            "- --tls-key=/etc/fanout/tls/tls.key\n",
            "- --tls-client-ca=/etc/fanout/tls/ca.crt\n",
            "- --search-threads=4\n",
        ] {
            assert_eq!(shards.matches(flag).count(), 8, "{flag}");
        }
        assert_eq!(shards.matches("secretName: fanout-leaf-tls\n").count(), 8);
        assert_eq!(shards.matches("defaultMode: 288\n").count(), 8);
        // Three probes per leaf, each with the client certificate.
        assert_eq!(shards.matches("- --tls-key\n").count(), 8 * 3);
        assert!(shards.contains("topology.kubernetes.io/zone"));
    }

    #[test]
    fn resources_render_limits_then_requests() {
        let files = render(&KubernetesOptions::production());
        let shards = file(&files, "shards.yaml");
        assert!(shards.contains(
            "resources:\n          limits:\n            cpu: \"4\"\n            memory: 8Gi\n            ephemeral-storage: 24Gi\n          requests:\n            cpu: \"4\"\n"
        ));
        let mut options = KubernetesOptions::small();
        options.leaf_resources = Resources::new()
            .request("cpu", "1")
            .request("memory", "1Gi")
            .limit("memory", "2Gi");
        let shards = render(&options).remove(1).1;
        assert!(shards.contains(
            "resources:\n          limits:\n            memory: 2Gi\n          requests:\n            cpu: \"1\"\n            memory: 1Gi\n"
        ));
    }

    #[test]
    fn the_copy_names_the_shard_and_the_shard_count() {
        let args = copy_shard_args(&KubernetesOptions::new(4, 1, "x"), 2);
        assert_eq!(
            args,
            [
                "deploy",
                "copy-shard",
                "--from=/index-src",
                "--to=/index",
                "--shard=2",
                "--shards=4"
            ]
        );
    }

    #[test]
    fn the_header_names_the_command_that_renders_the_files() {
        let small = render(&KubernetesOptions::small());
        assert!(small[1].1.starts_with(
            "# Rendered by `fanout deploy kubernetes --preset small` (2 shards x 2 replicas, namespace \"fanout\").\n"
        ));
        let mut options = KubernetesOptions::new(3, 2, "search");
        assert_eq!(
            options.command_line(),
            "--shards 3 --replicas 2 --namespace search"
        );
        options.tls = true;
        options.search_threads = Some(2);
        options.index_image = "me/index:g7".to_owned();
        options.index_copy_resources = Resources::new()
            .request("cpu", "1")
            .request("memory", "1Gi")
            .limit("memory", "1Gi");
        assert_eq!(
            options.command_line(),
            "--shards 3 --replicas 2 --namespace search --index-image me/index:g7 \
             --search-threads 2 --tls --copy-request cpu=1 --copy-request memory=1Gi --copy-limit memory=1Gi"
        );
        assert_eq!(
            KubernetesOptions::production().command_line(),
            "--preset production"
        );
        assert_eq!(preset("production"), Some(KubernetesOptions::production()));
        assert_eq!(preset("huge"), None);
    }

    #[test]
    fn the_default_image_is_the_workspace_version_of_the_fanout_image() {
        assert_eq!(
            DEFAULT_IMAGE,
            format!("fanout/fanout:{}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn timings_leave_room_for_dns_and_drain() {
        // (The inequalities on DNS staleness are checked at compile time.)
        let used = LEAF_PRE_STOP_S + DRAIN_DELAY_MS / 1000 + SERVER_GRACE_S;
        assert!(LEAF_TERMINATION_GRACE_S >= used + 10, "{used}");
        let shards = render(&KubernetesOptions::small()).remove(1).1;
        assert!(shards.contains("terminationGracePeriodSeconds: 45\n"));
        assert!(shards.contains("preStop:\n            sleep:\n              seconds: 15\n"));
        assert!(shards.contains("- --drain-delay-ms=2000\n"));
    }

    #[test]
    fn rendering_is_deterministic() {
        let options = KubernetesOptions::production();
        assert_eq!(render(&options), render(&options.clone()));
    }

    #[test]
    fn invalid_options_are_refused() {
        let ok = KubernetesOptions::small();
        assert!(ok.validate().is_ok());
        type Change = fn(&mut KubernetesOptions);
        let cases: Vec<(Change, &str)> = vec![
            (|o| o.shards = 0, "shards"),
            (|o| o.replicas = 0, "replicas"),
            (|o| o.namespace = "Fanout".into(), "namespace"),
            (|o| o.namespace = "-x".into(), "namespace"),
            (|o| o.cluster_domain = "a..b".into(), "cluster domain"),
            (|o| o.image = "a b".into(), "image"),
            (|o| o.search_threads = Some(0), "search threads"),
            (
                |o| o.leaf_resources = Resources::new().limit("cpu", ""),
                "resource",
            ),
            (
                |o| o.leaf_resources = Resources::new().request("cpu", "1"),
                "memory request",
            ),
            (
                |o| {
                    o.index_copy_resources = Resources::new()
                        .request("cpu", "1")
                        .request("memory", "1Gi")
                },
                "memory limit",
            ),
            (|o| o.index_size_limit = "2 Gi".into(), "index size limit"),
        ];
        for (change, what) in cases {
            let mut options = ok.clone();
            change(&mut options);
            let error = options.validate().unwrap_err();
            assert!(error.contains(what), "{error}");
        }
    }

    #[test]
    #[should_panic(expected = "invalid Kubernetes options: shards")]
    fn render_panics_on_invalid_options() {
        render(&KubernetesOptions::new(0, 1, "x"));
    }
}
