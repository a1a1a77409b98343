//! fanout's Kubernetes manifests (deploy/kubernetes), checked offline: no
//! API server runs here, so nothing proves that a cluster accepts or runs
//! them (docs/kubernetes.md says what that leaves open).
//!
//! - Each overlay's `generated/` folder is what `fanout deploy kubernetes
//!   --preset <overlay>` renders (a hand edit is caught), and other shapes
//!   render and check as well.
//! - `kubectl kustomize` renders every overlay, and the Python checks
//!   (deploy/kubernetes/tests/test_manifests.py, in the workspace venv)
//!   validate every object with kubernetes-validate in strict mode against
//!   every Kubernetes version it ships from 1.29 on (the first with native
//!   sidecars on by default; with kubernetes-validate 1.37.0: 1.29 to 1.37)
//!   and check the invariants: a headless Service and a PDB per leaf
//!   StatefulSet, probes, resources and a non-root read-only security
//!   context on every container, the root's topology naming exactly the
//!   shards' Services, the NetworkPolicies, the termination arithmetic.
//! - The images are those `deploy/build-image` and the index image's
//!   Dockerfile build.
//! - Every command line of the manifests (containers, init containers,
//!   probes, TLS included) is accepted by this binary, and the root's own
//!   parser reads the topology.
//! - The compose cluster (deploy/compose/docker-compose.yml, which
//!   tests/e2e/containers.rs runs under faults) starts the leaves, the root
//!   and the merger with the small overlay's arguments, except where the
//!   index lives and how the root names the shards.
//! - With Docker: the index image builds here (FROM the fanout image, no
//!   registry), and the small overlay's pods run as containers with the
//!   manifests' arguments, users, read-only root file systems and probes:
//!   the init containers copy their shards, the leaves and the root with
//!   its merger sidecar turn SERVING, and a search through the root covers
//!   every shard.
//! - The Grafana dashboard and the alert rules query only metrics that a
//!   live cluster exposes (deploy/observability/tests).
//!
//! Without kubectl the rendering checks say so loudly and pass without
//! running; without Docker, so does the container check.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fanout_root::Topology;
use fanout_tests::binary::run_bounded;
use fanout_tests::compose::{self, docker};
use fanout_tests::python::python_interpreter;
use fanout_tests::{CommandOutput, IndexFixture, ScratchDir, fanout_binary, workspace_root};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(120);

fn kubernetes_dir() -> PathBuf {
    workspace_root().join("deploy/kubernetes")
}

/// The overlays: the folders of deploy/kubernetes/overlays with a
/// kustomization.yaml.
fn overlay_names() -> Vec<String> {
    let dir = kubernetes_dir().join("overlays");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()))
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join("kustomization.yaml").is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// kubectl on PATH, or None after saying loudly that it is missing.
fn kubectl() -> Option<PathBuf> {
    static KUBECTL: OnceLock<Option<PathBuf>> = OnceLock::new();
    KUBECTL
        .get_or_init(|| {
            let found = std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join("kubectl"))
                    .find(|candidate| candidate.is_file())
            });
            if found.is_none() {
                eprintln!(
                    "\n************************************************************************\n\
                     SKIPPED: kubectl is not on PATH, so the Kubernetes manifests were NOT\n\
                     rendered, schema-validated or checked. Install kubectl 1.27+ (its\n\
                     built-in kustomize renders offline) to run these checks.\n\
                     ************************************************************************\n"
                );
            }
            found
        })
        .clone()
}

fn scratch(label: &str) -> ScratchDir {
    ScratchDir::new(fanout_binary!().scratch_root(), label).expect("a scratch folder")
}

fn run(command: Command, what: &str) -> CommandOutput {
    let output = run_bounded(command, LIMIT).unwrap_or_else(|error| panic!("{what}: {error:#}"));
    output
        .expect_success(what)
        .unwrap_or_else(|error| panic!("{error:#}"));
    output
}

/// The YAML documents of `path` as JSON values, read by PyYAML (in the
/// workspace venv, from tests/python/requirements.txt).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let mut command = Command::new(python_interpreter());
    command.args([
        "-c",
        "import json, sys, yaml\n\
         with open(sys.argv[1]) as f:\n    \
             json.dump([d for d in yaml.safe_load_all(f) if d is not None], sys.stdout)",
    ]);
    command.arg(path);
    let output = run(
        command,
        &format!(
            "reading {} with PyYAML (.venv/bin/pip install -r tests/python/requirements.txt)",
            path.display()
        ),
    );
    serde_json::from_str(&output.stdout).expect("PyYAML's documents as JSON")
}

/// Every overlay's objects as `kubectl kustomize` renders them, or None
/// without kubectl.
fn rendered() -> Option<&'static BTreeMap<String, Vec<Value>>> {
    static RENDERED: OnceLock<Option<BTreeMap<String, Vec<Value>>>> = OnceLock::new();
    RENDERED
        .get_or_init(|| {
            let kubectl = kubectl()?;
            let dir = scratch("kubernetes-render");
            let mut all = BTreeMap::new();
            for overlay in overlay_names() {
                let mut command = Command::new(&kubectl);
                command
                    .arg("kustomize")
                    .arg(kubernetes_dir().join("overlays").join(&overlay));
                let output = run(command, &format!("kubectl kustomize overlays/{overlay}"));
                let file = dir.path().join(format!("{overlay}.yaml"));
                std::fs::write(&file, &output.stdout).expect("the rendering is written");
                let objects = yaml_documents(&file);
                assert!(!objects.is_empty(), "overlays/{overlay} renders nothing");
                all.insert(overlay, objects);
            }
            Some(all)
        })
        .as_ref()
}

fn string(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not a string"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{value} is not a list"))
        .iter()
        .map(|item| string(item).to_owned())
        .collect()
}

fn kind(object: &Value) -> &str {
    string(&object["kind"])
}

fn name(object: &Value) -> &str {
    string(&object["metadata"]["name"])
}

fn workloads(objects: &[Value]) -> impl Iterator<Item = &Value> {
    objects
        .iter()
        .filter(|o| matches!(kind(o), "Deployment" | "StatefulSet"))
}

fn named<'a>(objects: &'a [Value], wanted_kind: &str, wanted_name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == wanted_kind && name(o) == wanted_name)
        .unwrap_or_else(|| panic!("no {wanted_kind}/{wanted_name}"))
}

/// `(container, "init" | "sidecar" | "container")` of a pod spec.
fn containers(pod: &Value) -> Vec<(&Value, &'static str)> {
    let mut all = Vec::new();
    for container in pod["initContainers"].as_array().into_iter().flatten() {
        let what = if container["restartPolicy"] == "Always" {
            "sidecar"
        } else {
            "init"
        };
        all.push((container, what));
    }
    for container in pod["containers"].as_array().expect("containers") {
        all.push((container, "container"));
    }
    all
}

fn container<'a>(workload: &'a Value, wanted: &str) -> &'a Value {
    containers(&workload["spec"]["template"]["spec"])
        .into_iter()
        .map(|(c, _)| c)
        .find(|c| c["name"] == wanted)
        .unwrap_or_else(|| panic!("{} has no container {wanted}", name(workload)))
}

/// The leaf StatefulSets by shard.
fn leaves(objects: &[Value]) -> BTreeMap<u32, &Value> {
    workloads(objects)
        .filter(|w| {
            w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "leaf"
        })
        .map(|w| {
            let shard = string(&w["spec"]["template"]["metadata"]["labels"]["fanout/shard"]);
            (shard.parse().expect("a shard number"), w)
        })
        .collect()
}

/// A command line's flags as `(name, value)` pairs, `--name=value` and
/// `--name value` alike (a flag with no value has ""), after the leading
/// words (the subcommand) which are returned first.
fn flags(args: &[String]) -> (Vec<String>, Vec<(String, String)>) {
    let mut words = Vec::new();
    let mut pairs = Vec::new();
    let mut position = 0;
    while position < args.len() {
        let arg = &args[position];
        position += 1;
        let Some(flag) = arg.strip_prefix("--") else {
            assert!(
                pairs.is_empty(),
                "a positional {arg:?} after flags in {args:?}"
            );
            words.push(arg.clone());
            continue;
        };
        if let Some((flag, value)) = flag.split_once('=') {
            pairs.push((flag.to_owned(), value.to_owned()));
        } else if args
            .get(position)
            .is_some_and(|next| !next.starts_with("--"))
        {
            pairs.push((flag.to_owned(), args[position].clone()));
            position += 1;
        } else {
            pairs.push((flag.to_owned(), String::new()));
        }
    }
    (words, pairs)
}

/// Takes every value of `flag` out of `pairs`.
fn take(pairs: &mut Vec<(String, String)>, flag: &str) -> Vec<String> {
    let taken = pairs
        .iter()
        .filter(|(name, _)| name == flag)
        .map(|(_, value)| value.clone())
        .collect();
    pairs.retain(|(name, _)| name != flag);
    taken
}

fn sorted(mut pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    pairs.sort();
    pairs
}

/// The fanout image `deploy/build-image` tags when FANOUT_IMAGE is not set,
/// computed by the script's own `version=` and `image=` lines.
fn built_image_name() -> String {
    let script = std::fs::read_to_string(workspace_root().join("deploy/build-image"))
        .expect("deploy/build-image");
    let lines: Vec<&str> = script
        .lines()
        .filter(|line| line.starts_with("version=") || line.starts_with("image="))
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "deploy/build-image no longer has one version= and one image= line: update this test"
    );
    let mut command = Command::new("bash");
    command
        .args(["-euc", &format!("{}\necho \"$image\"", lines.join("\n"))])
        .current_dir(workspace_root())
        .env_remove("FANOUT_IMAGE");
    let image = run(command, "deploy/build-image's image name")
        .stdout
        .trim()
        .to_owned();
    assert!(
        image.starts_with("fanout/fanout:"),
        "deploy/build-image tags {image:?}"
    );
    image
}

/// The default of `${VAR:-default}` in a compose value.
fn compose_default<'a>(value: &'a str, variable: &str) -> &'a str {
    let prefix = format!("${{{variable}:-");
    value
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or_else(|| panic!("{value:?} is not ${{{variable}:-...}}"))
}

fn compose_file() -> Value {
    let mut documents = yaml_documents(&workspace_root().join("deploy/compose/docker-compose.yml"));
    assert_eq!(documents.len(), 1);
    documents.remove(0)
}

fn compose_command(service: &Value) -> Vec<String> {
    string(&service["command"])
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_generated_folders_are_what_fanout_deploy_kubernetes_renders() {
    let binary = fanout_binary!();
    let overlays = kubernetes_dir().join("overlays");
    let presets: Vec<String> = fanout_deploy::presets()
        .into_iter()
        .map(|(name, _)| name.to_owned())
        .collect();
    assert_eq!(
        overlay_names(),
        {
            let mut sorted = presets.clone();
            sorted.sort();
            sorted
        },
        "every overlay is a preset of fanout deploy kubernetes, and every preset an overlay"
    );
    for preset in &presets {
        let generated = overlays.join(preset).join("generated");
        let output = binary
            .run(
                [
                    "deploy",
                    "kubernetes",
                    "--preset",
                    preset,
                    "--check",
                    "--out",
                    generated.to_str().unwrap(),
                ],
                LIMIT,
            )
            .unwrap();
        assert!(
            output.status.success(),
            "overlays/{preset}/generated is stale:\n{}",
            output.combined()
        );
    }

    // A hand edit, and a file nobody renders, are caught.
    let dir = scratch("kubernetes-generated");
    let copy = dir.path().join("small");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(overlays.join("small/generated")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    let shards = copy.join("shards.yaml");
    let text = std::fs::read_to_string(&shards).unwrap();
    std::fs::write(&shards, text.replacen("replicas: 2", "replicas: 5", 1)).unwrap();
    std::fs::write(copy.join("extra.yaml"), "kind: ConfigMap\n").unwrap();
    let check = |args: &[&str], out: &Path| {
        let mut all = vec!["deploy", "kubernetes"];
        all.extend_from_slice(args);
        all.extend(["--out", out.to_str().unwrap()]);
        binary.run(&all, LIMIT).unwrap()
    };
    let output = check(&["--preset", "small", "--check"], &copy);
    assert_eq!(output.status.code(), Some(1), "{}", output.combined());
    assert!(
        output
            .stderr
            .contains("shards.yaml: differs from a fresh render from line"),
        "{}",
        output.stderr
    );
    assert!(
        output.stderr.contains("extra.yaml: not rendered"),
        "{}",
        output.stderr
    );
    assert!(
        output
            .stderr
            .contains("regenerate with: fanout deploy kubernetes --preset small --out"),
        "{}",
        output.stderr
    );

    // Another shape: rendered, then checked by the command line its header names.
    let custom = dir.path().join("custom");
    let output = check(
        &[
            "--shards",
            "3",
            "--replicas",
            "2",
            "--namespace",
            "search",
            "--tls",
        ],
        &custom,
    );
    assert!(output.status.success(), "{}", output.combined());
    let topology = std::fs::read_to_string(custom.join("topology.toml")).unwrap();
    let parsed = Topology::from_toml_str(&topology).expect("the root reads the topology");
    assert_eq!(parsed.shard_count(), 3);
    assert!(topology.contains("\"dns:fanout-leaf-2.search.svc.cluster.local:7000\""));
    let shards = std::fs::read_to_string(custom.join("shards.yaml")).unwrap();
    let header = shards.lines().next().unwrap();
    let line = header
        .strip_prefix("# Rendered by `fanout deploy kubernetes ")
        .and_then(|rest| rest.split_once('`'))
        .map(|(line, _)| line)
        .unwrap_or_else(|| panic!("the header names no command: {header:?}"));
    assert_eq!(line, "--shards 3 --replicas 2 --namespace search --tls");
    let mut args: Vec<&str> = line.split(' ').collect();
    args.push("--check");
    let output = check(&args, &custom);
    assert!(output.status.success(), "{}", output.combined());
    assert_eq!(shards.matches("\nkind: StatefulSet\n").count(), 3);

    // Without --out the files are printed; a bad shape exits 64.
    let output = binary
        .run(
            ["deploy", "kubernetes", "--shards", "2", "--replicas", "1"],
            LIMIT,
        )
        .unwrap();
    assert!(output.status.success(), "{}", output.combined());
    assert!(output.stdout.contains("# ==> topology.toml <=="));
    let output = binary
        .run(
            ["deploy", "kubernetes", "--shards", "0", "--replicas", "2"],
            LIMIT,
        )
        .unwrap();
    assert_eq!(output.status.code(), Some(64), "{}", output.combined());
    assert!(output.stderr.contains("shards must be in 1..=1000"));
}

#[test]
fn every_overlay_renders_validates_strictly_and_keeps_its_invariants() {
    let Some(objects) = rendered() else { return };
    println!(
        "kubectl kustomize rendered {}",
        objects
            .iter()
            .map(|(overlay, objects)| format!("overlays/{overlay} ({} objects)", objects.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let started = Instant::now();
    let mut command = Command::new(python_interpreter());
    command
        .args([
            "-m",
            "unittest",
            "discover",
            "-v",
            "-s",
            "deploy/kubernetes/tests",
        ])
        .current_dir(workspace_root())
        .env("FANOUT_MANIFEST_TESTS_STRICT", "1");
    let output = run_bounded(command, Duration::from_secs(600)).expect("the Python checks run");
    let report = output.combined();
    println!("{report}");
    assert!(
        output.status.success(),
        "deploy/kubernetes/tests failed:\n{report}"
    );
    assert!(
        !report.contains(" skipped "),
        "a manifest check was skipped:\n{report}"
    );
    let versions = report
        .lines()
        .find(|line| line.starts_with("kubernetes-validate "))
        .unwrap_or_else(|| panic!("the schema check names no versions:\n{report}"));
    assert!(versions.contains("(oldest 1.29.0, newest "), "{versions}");
    println!(
        "schemas: {versions}; the Python checks took {:.1?}",
        started.elapsed()
    );
}

#[test]
fn the_images_are_those_the_image_builds_produce() {
    let image = built_image_name();
    assert_eq!(fanout_deploy::DEFAULT_IMAGE, image, "the generator's image");
    let dockerfile =
        std::fs::read_to_string(kubernetes_dir().join("images/index.Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!(
            "\nARG FANOUT_IMAGE={image}\nFROM ${{FANOUT_IMAGE}}\n"
        )),
        "the index image must be built FROM the fanout image deploy/build-image tags ({image})"
    );
    let compose = compose_file();
    for (service, definition) in compose["services"].as_object().unwrap() {
        let variable = if service == "merger" {
            "FANOUT_MERGER_IMAGE"
        } else {
            "FANOUT_IMAGE"
        };
        assert_eq!(
            compose_default(string(&definition["image"]), variable),
            image,
            "compose service {service}"
        );
    }
    let Some(rendered) = rendered() else { return };
    let (index_name, _) = fanout_deploy::DEFAULT_INDEX_IMAGE
        .split_once(':')
        .expect("a tag");
    for (overlay, objects) in rendered {
        for workload in workloads(objects) {
            for (container, what) in containers(&workload["spec"]["template"]["spec"]) {
                let where_ = format!("{overlay}: {}/{}", name(workload), container["name"]);
                let named = string(&container["image"]);
                if what == "init" {
                    let (repository, tag) = named.split_once(':').expect("a tagged image");
                    assert_eq!(repository, index_name, "{where_}");
                    assert!(!tag.is_empty(), "{where_}");
                } else {
                    assert_eq!(named, image, "{where_}: not what deploy/build-image builds");
                }
            }
        }
    }
}

#[test]
fn every_command_line_of_the_manifests_is_accepted_by_fanout() {
    let Some(rendered) = rendered() else { return };
    let binary = fanout_binary!();
    let mut lines: BTreeSet<Vec<String>> = BTreeSet::new();
    for objects in rendered.values() {
        for workload in workloads(objects) {
            for (container, _) in containers(&workload["spec"]["template"]["spec"]) {
                let where_ = format!("{}/{}", name(workload), container["name"]);
                // The images' entrypoint is /fanout: arguments only.
                assert!(
                    container.get("command").is_none(),
                    "{where_}: args, not command"
                );
                lines.insert(strings(&container["args"]));
                for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                    if let Some(exec) = container[probe]["exec"].get("command") {
                        let mut command = strings(exec);
                        assert_eq!(command.remove(0), "/fanout", "{where_} {probe}");
                        lines.insert(command);
                    }
                }
            }
        }
    }
    let accepts = |args: &[String]| {
        let mut with_help = args.to_vec();
        with_help.push("--help".to_owned());
        binary.run(&with_help, LIMIT).unwrap()
    };
    for line in &lines {
        let output = accepts(line);
        assert!(
            output.status.success(),
            "fanout refuses the manifests' `fanout {}`:\n{}",
            line.join(" "),
            output.stderr
        );
    }
    println!(
        "{} distinct command lines of the manifests accepted by fanout",
        lines.len()
    );
    // The root reads each overlay's topology with its own parser.
    for (overlay, objects) in rendered {
        let root = named(objects, "Deployment", "fanout-root");
        let topology = topology_of(objects, root);
        assert_eq!(
            topology.shard_count() as usize,
            leaves(objects).len(),
            "{overlay}: one topology shard per leaf StatefulSet"
        );
    }
}

/// The root's topology, from the ConfigMap its `--topology` file is mounted from.
fn topology_of(objects: &[Value], root: &Value) -> Topology {
    let pod = &root["spec"]["template"]["spec"];
    let container = container(root, "root");
    let (_, mut pairs) = flags(&strings(&container["args"]));
    let path = take(&mut pairs, "topology").pop().expect("--topology");
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == path.as_str())
        .expect("the topology file is mounted");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("its volume");
    let config_map = named(objects, "ConfigMap", string(&volume["configMap"]["name"]));
    let text = string(&config_map["data"][string(&mount["subPath"])]);
    Topology::from_toml_str(text).unwrap_or_else(|error| panic!("the root refuses it: {error}"))
}

/// The replica entries of a topology as `(shard, host, port)` for its
/// single `dns:` entry per shard.
fn dns_names(topology: &Topology) -> Vec<(u32, String, String)> {
    topology
        .shards
        .iter()
        .map(|shard| {
            assert_eq!(shard.replicas.len(), 1, "{shard:?}: one DNS name a shard");
            let entry = shard.replicas[0]
                .strip_prefix("dns:")
                .unwrap_or_else(|| panic!("{shard:?} is not found by DNS"));
            let (host, port) = entry.rsplit_once(':').expect("host:port");
            (shard.shard_id, host.to_owned(), port.to_owned())
        })
        .collect()
}

#[test]
fn the_compose_cluster_runs_the_manifests_command_lines() {
    let Some(rendered) = rendered() else { return };
    // The overlay without TLS: the compose cluster serves plaintext.
    let objects = &rendered["small"];
    let compose = compose_file();
    let services = compose["services"].as_object().unwrap();

    // Leaves: the same flags and values, but for where the index is.
    let k8s_leaves = leaves(objects);
    let leaf_flags = |args: &[String], shard: u32, index_dir: &str, where_: &str| {
        let (words, mut pairs) = flags(args);
        assert_eq!(words, ["leaf"], "{where_}");
        let dirs = take(&mut pairs, "shard-dir");
        assert_eq!(dirs, [format!("{index_dir}/shard-{shard}")], "{where_}");
        sorted(pairs)
    };
    let mut k8s_rest = BTreeSet::new();
    let mut leaf_port = None;
    for (shard, leaf) in &k8s_leaves {
        let args = strings(&container(leaf, "leaf")["args"]);
        let (_, pairs) = flags(&args);
        leaf_port = pairs
            .iter()
            .find(|(name, _)| name == "listen")
            .map(|(_, value)| value.rsplit_once(':').unwrap().1.to_owned());
        let where_ = format!("StatefulSet {}", name(leaf));
        k8s_rest.insert(leaf_flags(&args, *shard, "/index", &where_));
    }
    assert_eq!(
        k8s_rest.len(),
        1,
        "every leaf StatefulSet passes the same flags"
    );
    let k8s_leaf = k8s_rest.into_iter().next().unwrap();
    let leaf_port = leaf_port.expect("the leaves' --listen");

    let (_, mut index_job) = flags(&compose_command(&services["index"]));
    let index_dir = take(&mut index_job, "out")
        .pop()
        .expect("the index job's --out");
    let compose_leaves: BTreeMap<u32, &Value> = services
        .iter()
        .filter_map(|(service, definition)| {
            let shard = service.strip_prefix("leaf-")?.parse().ok()?;
            Some((shard, definition))
        })
        .collect();
    assert!(!compose_leaves.is_empty());
    for (shard, definition) in &compose_leaves {
        let where_ = format!("compose service leaf-{shard}");
        let args = compose_command(definition);
        assert_eq!(
            leaf_flags(&args, *shard, &index_dir, &where_),
            k8s_leaf,
            "{where_} and the manifests' leaves pass other flags"
        );
    }

    // The root: the same flags and values, but for how it names the shards.
    let root = named(objects, "Deployment", "fanout-root");
    let (words, mut k8s_root) = flags(&strings(&container(root, "root")["args"]));
    assert_eq!(words, ["root"]);
    take(&mut k8s_root, "topology");
    let (words, mut compose_root) = flags(&compose_command(&services["root"]));
    assert_eq!(words, ["root"]);
    let shard_flags = take(&mut compose_root, "shard");
    assert_eq!(
        sorted(compose_root),
        sorted(k8s_root),
        "the compose root and the manifests' root pass other flags"
    );
    // Each names every shard by one DNS name on the leaves' port: a headless
    // Service's there, a compose service's here.
    let k8s_names = dns_names(&topology_of(objects, root));
    let compose_names =
        dns_names(&Topology::from_shard_flags(&shard_flags).expect("--shard flags"));
    let namespace =
        string(&objects.iter().find(|o| kind(o) == "Namespace").unwrap()["metadata"]["name"]);
    for (shard, host, port) in &k8s_names {
        let service = named(objects, "Service", name(k8s_leaves[shard]));
        assert_eq!(
            *host,
            format!("{}.{namespace}.svc.cluster.local", name(service))
        );
        assert_eq!(*port, leaf_port);
    }
    for (shard, host, port) in &compose_names {
        assert_eq!(*host, format!("leaf-{shard}"));
        assert!(compose_leaves.contains_key(shard));
        assert_eq!(*port, leaf_port);
    }
    assert_eq!(compose_names.len(), compose_leaves.len());

    // The merger sidecar.
    let merger = strings(&container(root, "merger")["args"]);
    let (words, k8s_merger) = flags(&merger);
    let (compose_words, compose_merger) = flags(&compose_command(&services["merger"]));
    assert_eq!(words, compose_words);
    assert_eq!(
        sorted(k8s_merger),
        sorted(compose_merger),
        "the merger's flags"
    );

    // Compose's health checks are the manifests' liveness probes.
    let mut pairs = vec![
        (&services["root"], container(root, "root")),
        (&services["merger"], container(root, "merger")),
    ];
    pairs.extend(
        compose_leaves
            .values()
            .map(|definition| (*definition, container(k8s_leaves[&0], "leaf"))),
    );
    for (definition, k8s) in pairs {
        let mut test = strings(&definition["healthcheck"]["test"]);
        assert_eq!(test.remove(0), "CMD");
        assert_eq!(
            test,
            strings(&k8s["livenessProbe"]["exec"]["command"]),
            "compose health check vs {}'s liveness probe",
            k8s["name"]
        );
    }
    println!(
        "compose ({} leaf services) and overlays/small ({} shards) pass the same leaf, root and merger \
         flags; they differ only in the index folder ({index_dir} vs /index) and the shards' names",
        compose_leaves.len(),
        k8s_leaves.len()
    );
}

#[test]
fn the_dashboard_and_the_alert_rules_query_only_exposed_metrics() {
    let binary = fanout_binary!();
    let started = Instant::now();
    let mut command = Command::new(python_interpreter());
    command
        .args([
            "-m",
            "unittest",
            "discover",
            "-v",
            "-s",
            "deploy/observability/tests",
            "-k",
            "FilesTest",
            "-k",
            "LiveExpositionTest",
        ])
        .current_dir(workspace_root())
        .env("FANOUT_BIN", binary.path());
    let output = run_bounded(command, Duration::from_secs(900)).expect("the Python checks run");
    let report = output.combined();
    println!("{report}");
    assert!(
        output.status.success(),
        "deploy/observability/tests failed:\n{report}"
    );
    assert!(
        report.contains("test_every_referenced_metric_is_exposed") && !report.contains(" skipped "),
        "the live exposition check did not run:\n{report}"
    );
    println!(
        "dashboard and rules checked against a live exposition in {:.1?}",
        started.elapsed()
    );
}

/// The containers, network and image of the Docker run of an overlay's
/// pods, removed on drop (pass or fail; their logs printed on failure).
struct DockerPods {
    prefix: String,
    network: String,
    /// The images under test, standing in for the manifests' fanout image
    /// and index image (whose names the images test checks).
    fanout_image: String,
    index_image: String,
    containers: Vec<String>,
    images: Vec<String>,
}

impl DockerPods {
    fn new(fanout_image: &str) -> DockerPods {
        let prefix = format!("fanout-k8s-{}", std::process::id());
        let network = format!("{prefix}-net");
        docker(&["network", "create", &network]).expect("docker network create");
        DockerPods {
            prefix,
            network,
            fanout_image: fanout_image.to_owned(),
            index_image: format!("fanout/index:test-{}", std::process::id()),
            containers: Vec::new(),
            images: Vec::new(),
        }
    }

    /// `docker run` of one container of a pod spec, with what its security
    /// contexts and volume mounts say; `extra` goes before the image.
    fn run(
        &mut self,
        pod_name: &str,
        pod: &Value,
        container: &Value,
        volumes: &BTreeMap<String, PathBuf>,
        detach: bool,
        extra: &[String],
    ) -> CommandOutput {
        let name = format!("{}-{pod_name}-{}", self.prefix, string(&container["name"]));
        let mut args: Vec<String> = vec!["run".into(), "--name".into(), name.clone()];
        if detach {
            args.push("--detach".into());
        }
        args.extend(security_flags(pod, container));
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let volume = string(&mount["name"]);
            let target = string(&mount["mountPath"]);
            let read_only = mount["readOnly"] == true;
            match volumes.get(volume) {
                Some(source) => args.extend([
                    "--volume".into(),
                    format!(
                        "{}:{target}{}",
                        source.display(),
                        if read_only { ":ro" } else { "" }
                    ),
                ]),
                // An emptyDir nobody else needs: a tmpfs.
                None => args.extend(["--tmpfs".into(), target.to_owned()]),
            }
        }
        args.extend(extra.iter().cloned());
        let (index_name, _) = fanout_deploy::DEFAULT_INDEX_IMAGE.split_once(':').unwrap();
        let image = string(&container["image"]);
        args.push(if image.starts_with(&format!("{index_name}:")) {
            self.index_image.clone()
        } else {
            self.fanout_image.clone()
        });
        args.extend(strings(&container["args"]));
        self.containers.push(name);
        let mut command = Command::new("docker");
        command.args(&args);
        run_bounded(command, LIMIT).expect("docker run")
    }

    /// Runs `probe`'s exec command in `container` until it passes, at most
    /// its failureThreshold times every periodSeconds (or `cap`).
    fn probe(&self, container: &str, probe: &Value, cap: Duration) -> Duration {
        let started = Instant::now();
        let command = strings(&probe["exec"]["command"]);
        let period = Duration::from_secs(probe["periodSeconds"].as_u64().unwrap_or(10));
        let tries = probe["failureThreshold"].as_u64().unwrap_or(3);
        let mut last = String::new();
        for _ in 0..tries {
            let mut exec = Command::new("docker");
            exec.args(["exec", container]).args(&command);
            let output = run_bounded(exec, LIMIT).expect("docker exec");
            if output.status.success() {
                return started.elapsed();
            }
            last = output.combined();
            if started.elapsed() + period > cap {
                break;
            }
            std::thread::sleep(period.min(Duration::from_secs(2)));
        }
        panic!(
            "{container}: `{}` never passed in {:?}: {last}\n{}",
            command.join(" "),
            started.elapsed(),
            docker(&["logs", "--tail", "30", container]).unwrap_or_default()
        );
    }

    fn published(&self, container: &str, port: u16) -> std::net::SocketAddr {
        let printed = docker(&["port", container, &format!("{port}/tcp")]).expect("docker port");
        let first = printed
            .lines()
            .find(|l| l.starts_with("127.0.0.1:"))
            .expect("published");
        first.trim().parse().expect("an address")
    }
}

impl Drop for DockerPods {
    fn drop(&mut self) {
        for container in self.containers.iter().rev() {
            if std::thread::panicking()
                && let Ok(logs) = docker(&["logs", "--tail", "40", container])
            {
                eprintln!("--- {container}:\n{logs}");
            }
            let _ = docker(&["rm", "--force", "--volumes", container]);
        }
        let _ = docker(&["network", "rm", &self.network]);
        for image in &self.images {
            let _ = docker(&["rmi", "--force", image]);
        }
    }
}

/// `docker run` flags for a container's (and its pod's) security context.
fn security_flags(pod: &Value, container: &Value) -> Vec<String> {
    let pod_context = &pod["securityContext"];
    let context = &container["securityContext"];
    let field = |key: &str| {
        context
            .get(key)
            .or_else(|| pod_context.get(key))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut flags = Vec::new();
    let user = field("runAsUser").as_u64().expect("runAsUser");
    let group = field("runAsGroup").as_u64().expect("runAsGroup");
    flags.extend(["--user".to_owned(), format!("{user}:{group}")]);
    if let Some(fs_group) = pod_context["fsGroup"].as_u64() {
        flags.extend(["--group-add".to_owned(), fs_group.to_string()]);
    }
    if field("readOnlyRootFilesystem") == true {
        flags.push("--read-only".to_owned());
    }
    if field("allowPrivilegeEscalation") == false {
        flags.extend(["--security-opt".to_owned(), "no-new-privileges".to_owned()]);
    }
    for capability in context["capabilities"]["drop"]
        .as_array()
        .into_iter()
        .flatten()
    {
        flags.extend(["--cap-drop".to_owned(), string(capability).to_owned()]);
    }
    flags
}

#[test]
fn the_small_overlays_pods_run_as_containers() {
    if let Some(reason) = compose::docker_unavailable() {
        println!("skipped: no Docker here ({reason})");
        return;
    }
    let Some(rendered) = rendered() else { return };
    let started = Instant::now();
    let objects = &rendered["small"];
    let namespace =
        string(&objects.iter().find(|o| kind(o) == "Namespace").unwrap()["metadata"]["name"]);
    let image = compose::image().expect("the fanout image builds");
    let binary = fanout_binary!();
    let k8s_leaves = leaves(objects);
    let shards = k8s_leaves.len() as u32;
    let index = IndexFixture::scifact(&binary, shards).expect("a SciFact index");
    let dir = scratch("kubernetes-pods");
    let mut pods = DockerPods::new(&image);

    // The index image, FROM the fanout image: nothing pulled.
    let index_image = pods.index_image.clone();
    let image_arg = format!("FANOUT_IMAGE={image}");
    let dockerfile = kubernetes_dir().join("images/index.Dockerfile");
    // --force-rm: a build step that fails leaves no container behind.
    docker(&[
        "build",
        "--quiet",
        "--force-rm",
        "--file",
        dockerfile.to_str().unwrap(),
        "--build-arg",
        &image_arg,
        "--tag",
        &index_image,
        index.dir().to_str().unwrap(),
    ])
    .expect("the index image builds here");
    pods.images.push(index_image.clone());
    // A folder that is not a finished index is refused at build time.
    let empty = dir.path().join("not-an-index");
    std::fs::create_dir_all(&empty).unwrap();
    let refused = docker(&[
        "build",
        "--quiet",
        "--force-rm",
        "--file",
        dockerfile.to_str().unwrap(),
        "--build-arg",
        &image_arg,
        empty.to_str().unwrap(),
    ]);
    let refusal = format!(
        "{:#}",
        refused.expect_err("an index image without an index was built")
    );
    assert!(
        refusal.contains("/index-src holds no finished index"),
        "{refusal}"
    );

    // One pod (replica 0) of every shard: the init container copies the
    // shard into the pod's emptyDir, then the leaf serves it.
    for (shard, statefulset) in &k8s_leaves {
        let pod = &statefulset["spec"]["template"]["spec"];
        let pod_name = format!("{}-0", name(statefulset));
        let index_volume = dir.path().join(&pod_name);
        std::fs::create_dir_all(&index_volume).unwrap();
        // An emptyDir is world-writable.
        std::fs::set_permissions(
            &index_volume,
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let volumes = BTreeMap::from([("index".to_owned(), index_volume)]);
        let init = container(statefulset, "index");
        // Twice: a restarted init container finds the shard in place.
        for attempt in 1..=2 {
            let run_name = format!("{pod_name}-run{attempt}");
            let output = pods.run(&run_name, pod, init, &volumes, false, &[]);
            assert!(
                output.status.success(),
                "shard {shard}'s init container fails: {}",
                output.combined()
            );
            println!("{pod_name} init: {}", output.stdout.trim());
        }
        let leaf = container(statefulset, "leaf");
        let service = format!("{}.{namespace}.svc.cluster.local", name(statefulset));
        let extra = [
            "--network".to_owned(),
            pods.network.clone(),
            "--network-alias".to_owned(),
            service,
            "--hostname".to_owned(),
            pod_name.clone(),
        ];
        let output = pods.run(&pod_name, pod, leaf, &volumes, true, &extra);
        assert!(output.status.success(), "{}", output.combined());
    }
    for statefulset in k8s_leaves.values() {
        let leaf = container(statefulset, "leaf");
        let running = format!("{}-{}-0-leaf", pods.prefix, name(statefulset));
        let took = pods.probe(&running, &leaf["startupProbe"], Duration::from_secs(120));
        pods.probe(&running, &leaf["readinessProbe"], Duration::from_secs(30));
        pods.probe(&running, &leaf["livenessProbe"], Duration::from_secs(30));
        println!("{running}: startup, readiness and liveness probes pass ({took:.1?} to start)");
    }

    // The root pod: the merger sidecar first (it owns the pod's network
    // namespace here), then the root on its localhost.
    let root = named(objects, "Deployment", "fanout-root");
    let pod = &root["spec"]["template"]["spec"];
    let root_container = container(root, "root");
    let topology_mount = root_container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m.get("subPath").is_some())
        .expect("the topology mount");
    let topology_file = dir.path().join("topology.toml");
    let config_map = objects
        .iter()
        .find(|o| kind(o) == "ConfigMap" && name(o).starts_with("fanout-topology"))
        .expect("the topology ConfigMap");
    std::fs::write(
        &topology_file,
        string(&config_map["data"][string(&topology_mount["subPath"])]),
    )
    .unwrap();
    let merger = container(root, "merger");
    let extra = [
        "--network".to_owned(),
        pods.network.clone(),
        "--publish".to_owned(),
        "127.0.0.1::50051".to_owned(),
        "--publish".to_owned(),
        "127.0.0.1::9100".to_owned(),
    ];
    let output = pods.run("fanout-root-0", pod, merger, &BTreeMap::new(), true, &extra);
    assert!(output.status.success(), "{}", output.combined());
    let merger_name = format!("{}-fanout-root-0-merger", pods.prefix);
    pods.probe(
        &merger_name,
        &merger["startupProbe"],
        Duration::from_secs(60),
    );
    let volumes = BTreeMap::from([(string(&topology_mount["name"]).to_owned(), topology_file)]);
    let extra = ["--network".to_owned(), format!("container:{merger_name}")];
    let output = pods.run("fanout-root-0", pod, root_container, &volumes, true, &extra);
    assert!(output.status.success(), "{}", output.combined());
    let root_name = format!("{}-fanout-root-0-root", pods.prefix);
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        pods.probe(&root_name, &root_container[probe], Duration::from_secs(120));
        pods.probe(&merger_name, &merger[probe], Duration::from_secs(30));
    }

    // A search through the root covers every shard, merged by the sidecar.
    let addr = pods.published(&merger_name, 50051);
    let output = binary
        .run(
            [
                "search",
                "--addr",
                &format!("http://{addr}"),
                "--json",
                "vitamin d deficiency",
            ],
            LIMIT,
        )
        .unwrap();
    assert!(output.status.success(), "{}", output.combined());
    let response: Value = serde_json::from_str(&output.stdout).expect("a JSON response");
    assert_eq!(
        response["coverage"]["shards_answered"], shards,
        "{response}"
    );
    assert_eq!(response["coverage"]["shards_total"], shards, "{response}");
    assert_eq!(
        response["hits"].as_array().map(Vec::len),
        Some(10),
        "{response}"
    );
    let metrics = pods.published(&merger_name, 9100);
    let scraped = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(fanout_tests::metrics::scrape(metrics))
        .expect("the root's metrics");
    assert!(
        scraped.sum(
            "fanout_root_merges_total",
            &[("merger", "http://127.0.0.1:7100")]
        ) >= 1.0,
        "the sidecar merged the search"
    );

    // A leaf stops on SIGTERM within its terminationGracePeriodSeconds,
    // cleanly (the preStop sleep is the kubelet's; docker has none).
    let (_, statefulset) = k8s_leaves.iter().next().unwrap();
    let grace = statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let leaf_name = format!("{}-{}-0-leaf", pods.prefix, name(statefulset));
    let stopping = Instant::now();
    docker(&["stop", "--time", &grace.to_string(), &leaf_name]).expect("docker stop");
    let stopped = stopping.elapsed();
    let exit = docker(&["inspect", "--format", "{{.State.ExitCode}}", &leaf_name]).unwrap();
    assert_eq!(exit.trim(), "0", "the leaf exits 0 after SIGTERM");
    assert!(stopped < Duration::from_secs(grace), "{stopped:?}");
    println!(
        "overlays/small as containers: {shards} leaf pods (1 replica each), the root pod with its \
         merger sidecar; a search covered {shards}/{shards} shards; a leaf drained and exited in \
         {stopped:.1?} (grace {grace} s); {:.1?} in all",
        started.elapsed()
    );
}
