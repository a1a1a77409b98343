//! TLS on every hop, through real processes (certificates made here with
//! fanout-cluster's throwaway CA, never committed):
//!
//! - 2 shards x 2 leaves and a merger that accept only clients with a
//!   certificate from the cluster's CA (mutual TLS), a root that presents
//!   its own and serves Search over TLS: searches answer; a Python grpcio
//!   client connects with the CA;
//! - a plaintext client to a TLS server fails cleanly (and the server goes
//!   on); a leaf refuses a client with no certificate, with one from another
//!   CA, and with an expired one;
//! - health answers in plaintext on the leaves' `--health-listen` port;
//! - every certificate rotated (new files, SIGHUP) under load: 0 queries
//!   fail, and new connections get the new certificate;
//! - a private key every user may read is refused at start.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fanout_cluster::certs::{Ca, CertFiles, Validity};
use fanout_proto::search::v1::SearchRequest;
use fanout_proto::search::v1::search_client::SearchClient;
use fanout_proto::v1::InfoRequest;
use fanout_proto::v1::leaf_client::LeafClient;
use fanout_tests::{ClusterProcess, IndexFixture, Role, ScratchDir, fanout_binary, health};
use nix::sys::signal::Signal;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_check_response::ServingStatus;

const START_LIMIT: Duration = Duration::from_secs(60);
const CALL_LIMIT: Duration = Duration::from_secs(10);
const NAMES: &[&str] = &["localhost", "127.0.0.1"];

/// Search over TLS from Python's grpcio, trusting the CA file given.
const PYTHON_CLIENT: &str = r#"
import sys
import grpc
from fanout_py.stubs import search_pb2, search_pb2_grpc

address, ca_file = sys.argv[1], sys.argv[2]
with open(ca_file, "rb") as ca:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read())
channel = grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", "localhost")])
response = search_pb2_grpc.SearchStub(channel).Search(search_pb2.SearchRequest(query="cancer cells", k=5), timeout=10)
print(f"python over TLS: {len(response.hits)} hits")
"#;

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

fn path(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// A TLS channel to `addr` trusting `ca`, presenting `identity` if given.
async fn tls_channel(
    addr: SocketAddr,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        config = config.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))?
        .connect_timeout(Duration::from_secs(3))
        .tls_config(config)?
        .connect()
        .await
}

/// Whether a leaf answers `Info` to a client with `identity`.
async fn leaf_answers(
    addr: SocketAddr,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<(), String> {
    let channel = tls_channel(addr, ca, identity)
        .await
        .map_err(|error| format!("{error:?}"))?;
    let mut client = LeafClient::new(channel);
    match tokio::time::timeout(CALL_LIMIT, client.info(InfoRequest {})).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(format!("{status:?}")),
        Err(_) => Err("no answer in time".to_owned()),
    }
}

/// The certificate `addr` presents to a new connection, DER.
async fn presented_certificate(addr: SocketAddr, ca_pem: &str) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("the CA"))
        .expect("added");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let name = ServerName::try_from("localhost").expect("a name");
    // The leaf asks for a client certificate; this handshake may fail at
    // its end, after the server's certificate is known.
    match connector.connect(name, tcp).await {
        Ok(stream) => stream
            .get_ref()
            .1
            .peer_certificates()
            .expect("certificates")[0]
            .to_vec(),
        Err(error) => panic!("cannot read the certificate of {addr}: {error}"),
    }
}

fn der_of(pem: &str) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a certificate")
        .to_vec()
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hop_over_tls_and_certificates_rotate_under_load() {
    let binary = fanout_binary!();
    let index = IndexFixture::scifact(&binary, 2).expect("SciFact in 2 shards builds");
    let scratch = ScratchDir::new(binary.scratch_root(), "tls").expect("scratch folder");
    let dir = scratch.path();
    let ca = Ca::new("fanout test CA").expect("a CA");
    let ca_path = dir.join("ca.pem");
    ca.write(&ca_path).expect("the CA is written");
    let ca_pem = ca.cert_pem();
    let server = ca.issue(NAMES, Validity::Current).expect("a certificate");
    let files: CertFiles = server.write(dir, "server").expect("written");
    let tls_flags = |mutual: bool| {
        let mut flags = vec![
            "--tls-cert".to_owned(),
            path(&files.cert).to_owned(),
            "--tls-key".to_owned(),
            path(&files.key).to_owned(),
        ];
        if mutual {
            flags.extend(["--tls-client-ca".to_owned(), path(&ca_path).to_owned()]);
        }
        flags
    };

    // Leaves and merger: mutual TLS; leaf 0/0 also has a plaintext health port.
    let health_addr = free_port();
    let mut leaves: Vec<ClusterProcess> = Vec::new();
    for shard in 0..2u32 {
        for replica in 0..2u32 {
            let mut leaf_args = args(&[
                "--shard-dir",
                path(&index.shard_dir(shard)),
                "--listen",
                "127.0.0.1:0",
            ]);
            leaf_args.extend(tls_flags(true).iter().map(OsString::from));
            if (shard, replica) == (0, 0) {
                leaf_args.extend(args(&["--health-listen", &health_addr.to_string()]));
            }
            let leaf = binary
                .start(
                    Role::Leaf {
                        shard_id: shard,
                        replica,
                    },
                    &leaf_args,
                    dir,
                    START_LIMIT,
                )
                .await
                .expect("a TLS leaf starts");
            leaves.push(leaf);
        }
    }
    let mut merger_args = args(&["--listen", "127.0.0.1:0"]);
    merger_args.extend(tls_flags(true).iter().map(OsString::from));
    let merger = binary
        .start(Role::Merger, &merger_args, dir, START_LIMIT)
        .await
        .expect("a TLS merger starts");
    let mut root_args = args(&[
        "--listen",
        "127.0.0.1:0",
        "--tls-ca",
        path(&ca_path),
        "--merger",
        &merger.addr.to_string(),
    ]);
    for shard in 0..2usize {
        let replicas: Vec<String> = leaves[shard * 2..shard * 2 + 2]
            .iter()
            .map(|leaf| leaf.addr.to_string())
            .collect();
        root_args.extend(args(&[
            "--shard",
            &format!("{shard}={}", replicas.join(",")),
        ]));
    }
    root_args.extend(tls_flags(false).iter().map(OsString::from));
    let root = binary
        .start(Role::ROOT, &root_args, dir, START_LIMIT)
        .await
        .expect("a TLS root starts");

    // Searches answer over TLS, through mutual TLS to leaves and merger.
    let channel = tls_channel(root.addr, &ca_pem, None)
        .await
        .expect("a TLS client connects");
    let client = SearchClient::new(channel);
    let search = |client: SearchClient<Channel>| async move {
        let mut request = tonic::Request::new(SearchRequest {
            query: "cancer cells".into(),
            k: 10,
            ..SearchRequest::default()
        });
        request.set_timeout(CALL_LIMIT);
        client
            .clone()
            .search(request)
            .await
            .map(|response| response.into_inner())
    };
    let mut answered = None;
    for _ in 0..100 {
        match search(client.clone()).await {
            Ok(response) => {
                answered = Some(response);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let response = answered.expect("a search answers over TLS");
    let coverage = response.coverage.expect("coverage");
    assert_eq!(
        (coverage.shards_answered, coverage.shards_total),
        (2, 2),
        "{coverage:?}"
    );
    assert_eq!(response.hits.len(), 10);

    // The command line's clients: `fanout search` and `fanout health` (the
    // probe of containers) with the CA, and a certificate for a leaf.
    let root_addr = root.addr.to_string();
    let ca_arg = path(&ca_path).to_owned();
    let run = |args: &[&str]| {
        tokio::task::block_in_place(|| binary.run(args, CALL_LIMIT)).expect("fanout runs")
    };
    let searched = run(&[
        "search",
        "--addr",
        &root_addr,
        "--tls-ca",
        &ca_arg,
        "--tls-server-name",
        "localhost",
        "cancer",
    ]);
    assert_eq!(searched.status.code(), Some(0), "{}", searched.combined());
    let probed = run(&["health", &root_addr, "--tls-ca", &ca_arg]);
    assert_eq!(probed.status.code(), Some(0), "{}", probed.combined());
    // By DNS name: the certificate is checked against the name dialled.
    let by_name = format!("localhost:{}", root.addr.port());
    let probed = run(&["health", &by_name, "--tls-ca", &ca_arg]);
    assert_eq!(probed.status.code(), Some(0), "{}", probed.combined());
    let stranger_name = run(&[
        "health",
        &by_name,
        "--tls-ca",
        &ca_arg,
        "--tls-server-name",
        "fanout.invalid",
    ]);
    assert_eq!(
        stranger_name.status.code(),
        Some(1),
        "a certificate was accepted for a name it does not hold: {}",
        stranger_name.combined()
    );
    let leaf_addr = leaves[0].addr.to_string();
    let (cert_arg, key_arg) = (path(&files.cert).to_owned(), path(&files.key).to_owned());
    let probed = run(&[
        "health",
        &leaf_addr,
        "--tls-ca",
        &ca_arg,
        "--tls-cert",
        &cert_arg,
        "--tls-key",
        &key_arg,
    ]);
    assert_eq!(probed.status.code(), Some(0), "{}", probed.combined());
    let refused = run(&["health", &leaf_addr, "--tls-ca", &ca_arg]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "a leaf answered a probe without a certificate"
    );

    // A Python grpcio client, with the CA.
    let script = dir.join("tls_client.py");
    std::fs::write(&script, PYTHON_CLIENT).expect("the script is written");
    let python_dir = fanout_tests::workspace_root().join("python");
    let mut command = std::process::Command::new(fanout_tests::python::python_interpreter());
    command
        .arg(&script)
        .arg(root.addr.to_string())
        .arg(&ca_path)
        .env("PYTHONPATH", &python_dir)
        .current_dir(&python_dir);
    let output = tokio::task::block_in_place(|| {
        fanout_tests::binary::run_bounded(command, Duration::from_secs(60))
    })
    .expect("python runs");
    assert!(output.status.success(), "{}", output.combined());
    assert!(
        output.stdout.contains("python over TLS: 5 hits"),
        "{}",
        output.combined()
    );

    // A plaintext client to the TLS root fails, quickly, and the root goes on.
    let plaintext = Endpoint::from_shared(format!("http://{}", root.addr))
        .expect("a URL")
        .connect_timeout(Duration::from_secs(3));
    let refused = tokio::time::timeout(CALL_LIMIT, async {
        match plaintext.connect().await {
            Err(_) => true,
            Ok(channel) => SearchClient::new(channel)
                .search(SearchRequest {
                    query: "cancer".into(),
                    ..SearchRequest::default()
                })
                .await
                .is_err(),
        }
    })
    .await;
    assert!(
        matches!(refused, Ok(true)),
        "a plaintext call to a TLS root did not fail quickly"
    );
    search(client.clone())
        .await
        .expect("the root still answers over TLS");

    // Leaves: no client certificate, another CA's, an expired one: refused.
    let leaf = leaves[1].addr;
    let good = (server.cert_pem.as_str(), server.key_pem.as_str());
    leaf_answers(leaf, &ca_pem, Some(good))
        .await
        .expect("the cluster's certificate is accepted");
    assert!(
        leaf_answers(leaf, &ca_pem, None).await.is_err(),
        "a client without a certificate was served"
    );
    let stranger = Ca::new("another CA")
        .expect("a CA")
        .issue(NAMES, Validity::Current)
        .expect("a certificate");
    assert!(
        leaf_answers(leaf, &ca_pem, Some((&stranger.cert_pem, &stranger.key_pem)))
            .await
            .is_err(),
        "a certificate from another CA was accepted"
    );
    let expired = ca.issue(NAMES, Validity::Expired).expect("a certificate");
    assert!(
        leaf_answers(leaf, &ca_pem, Some((&expired.cert_pem, &expired.key_pem)))
            .await
            .is_err(),
        "an expired certificate was accepted"
    );

    // Health in plaintext on the leaf's own health port.
    let health_channel = health::connect(health_addr)
        .await
        .expect("the health port connects");
    let status = fanout_tests::health_status(health_channel, fanout_tests::LEAF_SERVICE_NAME)
        .await
        .expect("health answers in plaintext");
    assert_eq!(status, ServingStatus::Serving);

    // Rotation under load: new certificates for everybody, SIGHUP.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (client, stop) = (client.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let (mut sent, mut failed) = (0usize, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let mut request = tonic::Request::new(SearchRequest {
                        query: "protein folding".into(),
                        k: 10,
                        ..SearchRequest::default()
                    });
                    request.set_timeout(CALL_LIMIT);
                    sent += 1;
                    if let Err(status) = client.clone().search(request).await {
                        failed.push(status);
                    }
                }
                (sent, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rotated = ca
        .issue(NAMES, Validity::Current)
        .expect("a new certificate");
    rotated
        .write(dir, "server")
        .expect("the files are replaced");
    for process in leaves.iter().chain([&merger, &root]) {
        process.signal(Signal::SIGHUP).expect("SIGHUP");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for task in load {
        let (task_sent, failed) = task.await.expect("the load ran");
        assert!(
            failed.is_empty(),
            "{} searches failed during the rotation: {:?}",
            failed.len(),
            failed.first()
        );
        sent += task_sent;
    }
    assert!(sent > 20, "the load ran: {sent} searches");
    for process in leaves.iter().chain([&merger, &root]) {
        assert!(process.is_running(), "{:?} stopped on SIGHUP", process.role);
        assert_eq!(
            presented_certificate(process.addr, &ca_pem).await,
            der_of(&rotated.cert_pem),
            "{:?} still presents the old certificate to new connections",
            process.role
        );
    }
    // New connections after the rotation work end to end.
    let fresh = SearchClient::new(
        tls_channel(root.addr, &ca_pem, None)
            .await
            .expect("connects"),
    );
    search(fresh).await.expect("a search over new connections");
    println!("rotation under load: {sent} searches, 0 failed");
}

#[test]
fn a_key_every_user_may_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let binary = fanout_binary!();
    let scratch = ScratchDir::new(binary.scratch_root(), "tls-mode").expect("scratch folder");
    let ca = Ca::new("fanout test CA").expect("a CA");
    let files = ca
        .issue(NAMES, Validity::Current)
        .expect("a certificate")
        .write(scratch.path(), "merger")
        .expect("written");
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let output = binary
        .run(
            [
                "merger",
                "--tls-cert",
                path(&files.cert),
                "--tls-key",
                path(&files.key),
            ],
            Duration::from_secs(30),
        )
        .expect("the merger runs");
    assert_eq!(output.status.code(), Some(64), "{}", output.combined());
    assert!(output.stderr.contains("chmod 600"), "{}", output.combined());
}

/// `fanout loadgen scenario` with `tls = true`: its cluster runs TLS on
/// every hop and the load reaches it over TLS, without an error.
#[test]
fn a_scenario_runs_its_cluster_and_load_over_tls() {
    let binary = fanout_binary!();
    let scratch = ScratchDir::new(binary.scratch_root(), "tls-scenario").expect("scratch folder");
    let data = fanout_tests::workspace_root().join("data/beir-scifact");
    let scenario = format!(
        r#"
name = "tls-e2e"
rounds = 1

[cluster]
corpus = "{corpus}"
id_field = "_id"
shards = 2
replicas = 1
search_threads = 1
merger = "process"
tls = true

[load]
rate = 20
warmup = "300ms"
duration = "1500ms"
queries = "{queries}"

[[variant]]
name = "tls"
"#,
        corpus = data.join("corpus.jsonl.gz").display(),
        queries = data.join("queries.jsonl").display(),
    );
    let file = scratch.path().join("tls.toml");
    std::fs::write(&file, scenario).expect("scenario written");
    let out = scratch.path().join("out");
    let output = binary
        .run(
            [
                "loadgen".as_ref(),
                "scenario".as_ref(),
                file.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
                "--data-dir".as_ref(),
                scratch.path().join("indexes").as_os_str(),
            ],
            Duration::from_secs(180),
        )
        .expect("the scenario runs");
    output
        .expect_success("fanout loadgen scenario")
        .expect("the scenario succeeds");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("summary.json")).expect("a summary"),
    )
    .expect("JSON");
    let row = &summary["rows"][0];
    assert_eq!(row["variant"], "tls", "{summary}");
    assert!(row["requests"].as_u64().unwrap_or(0) >= 20, "{row}");
    assert_eq!(row["errors"].as_u64(), Some(0), "{row}");
    let ca = out
        .join("logs")
        .join("cluster-0")
        .join("tls")
        .join("ca.pem");
    assert!(
        ca.is_file() || out.join("logs").is_dir(),
        "the scenario's CA: {}",
        ca.display()
    );
}
