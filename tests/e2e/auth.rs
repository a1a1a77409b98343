//! Bearer tokens at the root (`fanout root --auth-tokens FILE`), through a
//! real cluster:
//!
//! - every call without a token is UNAUTHENTICATED, with an unknown or a
//!   revoked one PERMISSION_DENIED, with a good one answered; health stays
//!   open;
//! - a token's own limits (`max_k`, syntax mode, a rate) are enforced, and a
//!   tenant over its rate does not hold back another one;
//! - SIGHUP reloads the file without a restart or a dropped connection;
//! - no token appears in the root's log; a tokens file every user may read
//!   is refused at start (exit 64).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use fanout_proto::search::v1::search_client::SearchClient;
use fanout_proto::search::v1::{QueryMode, SearchRequest, SearchResponse};
use fanout_proto::v1::QueryRequest;
use fanout_proto::v1::root_client::RootClient;
use fanout_tests::{
    ClusterOptions, MergerPlacement, SEARCH_SERVICE_NAME, ScratchDir, fanout_binary, health,
    health_status, start_cluster,
};
use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

const CALL_LIMIT: Duration = Duration::from_secs(10);

fn sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A token nobody could guess from the test's source.
fn fresh_token(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos();
    format!("{label}-{nanos:x}-{}", std::process::id())
}

fn write_tokens(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).expect("the tokens file is written");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

async fn search_with(
    client: &SearchClient<Channel>,
    token: Option<&str>,
    k: u32,
    mode: QueryMode,
) -> Result<SearchResponse, tonic::Status> {
    let mut request = tonic::Request::new(SearchRequest {
        query: "cancer cells".into(),
        k,
        mode: mode as i32,
        ..SearchRequest::default()
    });
    request.set_timeout(CALL_LIMIT);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("ASCII");
        request.metadata_mut().insert("authorization", value);
    }
    Ok(client.clone().search(request).await?.into_inner())
}

async fn code_of(client: &SearchClient<Channel>, token: Option<&str>) -> Code {
    match search_with(client, token, 10, QueryMode::Natural).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_decide_who_searches_within_which_limits() {
    let binary = fanout_binary!();
    let scratch = ScratchDir::new(binary.scratch_root(), "auth").expect("scratch folder");
    let tokens_path = scratch.path().join("tokens.toml");
    let good = fresh_token("good");
    let small = fresh_token("small");
    let revoked = fresh_token("revoked");
    let later = fresh_token("later");
    let tokens = format!(
        "[[token]]\nname = \"ui\"\nsha256 = \"{}\"\n\n\
         [[token]]\nname = \"small\"\nsha256 = \"{}\"\nmax_k = 5\nsyntax = false\nrate = 5.0\nburst = 5\n\n\
         [[token]]\nname = \"old\"\nsha256 = \"{}\"\nrevoked = true\n",
        sha256(&good),
        sha256(&small),
        sha256(&revoked)
    );
    write_tokens(&tokens_path, &tokens, 0o600);
    let path = tokens_path.display().to_string();
    let options = ClusterOptions::scifact(2)
        .merger(MergerPlacement::Embedded)
        .root_args(&["--auth-tokens", &path]);
    let cluster = start_cluster(&binary, options).await;
    let client = cluster.search_client().await.expect("client connects");

    // Health is open.
    let channel = health::connect(cluster.root().addr)
        .await
        .expect("connects");
    let health = health_status(channel, SEARCH_SERVICE_NAME)
        .await
        .expect("health answers");
    assert_eq!(health, ServingStatus::Serving);

    // Without a token, 100% refused; unknown and revoked: denied.
    for _ in 0..50 {
        assert_eq!(code_of(&client, None).await, Code::Unauthenticated);
    }
    assert_eq!(
        code_of(&client, Some("not-a-token")).await,
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(&client, Some(&revoked)).await,
        Code::PermissionDenied
    );
    let answer = search_with(&client, Some(&good), 10, QueryMode::Natural)
        .await
        .expect("a good token searches");
    assert_eq!(answer.hits.len(), 10);
    // The generic API asks for the same token.
    let mut root: RootClient<Channel> = cluster.root_client().await.expect("client connects");
    let status = root
        .query(tonic::Request::new(QueryRequest::default()))
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);

    // `fanout search` takes the token from FANOUT_TOKEN.
    let root_url = cluster.root_url();
    let cli_search = |token: Option<&str>| {
        let mut command = binary.command();
        command.args(["search", "--addr", &root_url, "cancer"]);
        if let Some(token) = token {
            command.env("FANOUT_TOKEN", token);
        }
        fanout_tests::binary::run_bounded(command, CALL_LIMIT).expect("fanout search runs")
    };
    let refused = tokio::task::block_in_place(|| cli_search(None));
    assert_eq!(refused.status.code(), Some(1), "{}", refused.combined());
    assert!(
        refused.stderr.contains("UNAUTHENTICATED"),
        "{}",
        refused.combined()
    );
    let answered = tokio::task::block_in_place(|| cli_search(Some(&good)));
    assert_eq!(answered.status.code(), Some(0), "{}", answered.combined());

    // The small token's own limits.
    let status = search_with(&client, Some(&small), 10, QueryMode::Natural)
        .await
        .expect_err("k over the token's max_k");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("at most k = 5"), "{status:?}");
    let status = search_with(&client, Some(&small), 5, QueryMode::Syntax)
        .await
        .expect_err("syntax mode");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // Its rate: 5 a second, a burst of 5. Twenty at once: most refused,
    // while the other tenant goes on.
    let flood: Vec<Code> = futures::future::join_all((0..20).map(|_| async {
        match search_with(&client, Some(&small), 5, QueryMode::Natural).await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        }
    }))
    .await;
    let refused = flood
        .iter()
        .filter(|code| **code == Code::ResourceExhausted)
        .count();
    assert!(
        refused >= 10,
        "the rate held only {refused} of 20: {flood:?}"
    );
    assert!(
        flood
            .iter()
            .all(|code| matches!(code, Code::Ok | Code::ResourceExhausted))
    );
    assert_eq!(
        code_of(&client, Some(&good)).await,
        Code::Ok,
        "another tenant is not starved"
    );

    // SIGHUP: `good` revoked, `later` added; same process, same connection.
    let pid = cluster.root().pid;
    let reloaded = format!(
        "[[token]]\nname = \"ui\"\nsha256 = \"{}\"\nrevoked = true\n\n[[token]]\nname = \"later\"\nsha256 = \"{}\"\n",
        sha256(&good),
        sha256(&later)
    );
    write_tokens(&tokens_path, &reloaded, 0o600);
    cluster.root().signal(Signal::SIGHUP).expect("SIGHUP");
    let mut switched = false;
    for _ in 0..100 {
        if code_of(&client, Some(&later)).await == Code::Ok {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(switched, "the new token never worked");
    assert_eq!(code_of(&client, Some(&good)).await, Code::PermissionDenied);
    assert_eq!(cluster.root().pid, pid);
    assert!(cluster.root().is_running());
    // A broken file on the next SIGHUP keeps the tokens in force.
    write_tokens(&tokens_path, "this is not toml [", 0o600);
    cluster.root().signal(Signal::SIGHUP).expect("SIGHUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(code_of(&client, Some(&later)).await, Code::Ok);

    // No token in the log.
    let log =
        std::fs::read_to_string(cluster.root().log_path().expect("a log file")).expect("the log");
    assert!(log.contains("tokens reloaded"), "{log}");
    for token in [&good, &small, &revoked, &later] {
        assert!(
            !log.contains(token.as_str()),
            "a token is in the root's log"
        );
    }
}

#[test]
fn a_tokens_file_every_user_may_read_is_refused() {
    let binary = fanout_binary!();
    let scratch = ScratchDir::new(binary.scratch_root(), "auth-mode").expect("scratch folder");
    let path = scratch.path().join("tokens.toml");
    write_tokens(
        &path,
        &format!("[[token]]\nname = \"a\"\nsha256 = \"{}\"\n", sha256("x")),
        0o644,
    );
    let output = binary
        .run(
            [
                "root",
                "--shard",
                "0=127.0.0.1:1",
                "--auth-tokens",
                path.to_str().expect("UTF-8"),
            ],
            Duration::from_secs(30),
        )
        .expect("the root runs");
    assert_eq!(output.status.code(), Some(64), "{}", output.combined());
    assert!(output.stderr.contains("chmod 600"), "{}", output.combined());
}
