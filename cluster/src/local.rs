//! The usual start-up of a local cluster: every leaf and the merger at once,
//! then one or more roots over their announced addresses, each waited for
//! until its `grpc.health.v1` says SERVING.
//!
//! Several roots over the same leaves are how a benchmark compares root
//! policies (hedging off, adaptive, ...) on identical backends without
//! restarting the leaves between variants.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::Instant;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::index::ReadyIndex;
use crate::process::{Cluster, Launcher, Role};

/// The service whose health says a root is ready.
pub const SEARCH_SERVICE_NAME: &str = "fanout.search.v1.Search";
/// The service whose health says a leaf is ready.
pub const LEAF_SERVICE_NAME: &str = "fanout.v1.Leaf";
/// The service whose health says a merger is ready.
pub const MERGER_SERVICE_NAME: &str = "fanout.v1.Merger";

/// Time between two health checks while a process starts.
const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Limit of one connection attempt or one health check.
const HEALTH_ATTEMPT_LIMIT: Duration = Duration::from_secs(1);

/// Starts `replicas` leaves for every shard of `index`, on free loopback
/// ports; `extra_args(shard, replica)` adds flags to one leaf (faults, thread
/// counts). [`Cluster::admit_all`] then waits for their addresses.
pub fn start_leaves(
    cluster: &mut Cluster,
    launcher: &Launcher,
    index: &ReadyIndex,
    replicas: u32,
    mut extra_args: impl FnMut(u32, u32) -> Vec<OsString>,
) -> anyhow::Result<()> {
    for shard in &index.manifest.shards {
        let shard_dir = index.dir.join(&shard.dir);
        for replica in 0..replicas {
            let role = Role::Leaf {
                shard_id: shard.shard_id,
                replica,
            };
            let mut args = vec![
                OsString::from("--shard-dir"),
                shard_dir.clone().into_os_string(),
                OsString::from("--listen"),
                OsString::from("127.0.0.1:0"),
            ];
            args.extend(extra_args(shard.shard_id, replica));
            cluster.start(launcher, role, &args)?;
        }
    }
    Ok(())
}

/// Starts a merger process on a free loopback port.
pub fn start_merger(cluster: &mut Cluster, launcher: &Launcher) -> anyhow::Result<()> {
    let args = [OsString::from("--listen"), OsString::from("127.0.0.1:0")];
    cluster.start(launcher, Role::Merger, &args)
}

/// The flags of a root listening on `listen` over the cluster's announced
/// leaves (`--shard i=addr,addr` for shards `0..shard_count`) and its merger,
/// if one runs.
pub fn root_args(
    cluster: &Cluster,
    shard_count: u32,
    listen: SocketAddr,
) -> anyhow::Result<Vec<OsString>> {
    let mut args = vec![
        OsString::from("--listen"),
        OsString::from(listen.to_string()),
    ];
    for shard_id in 0..shard_count {
        let replicas: Vec<String> = cluster
            .leaves_of_shard(shard_id)
            .map(|leaf| leaf.addr.to_string())
            .collect();
        if replicas.is_empty() {
            bail!("shard {shard_id} has no announced leaf");
        }
        args.push(OsString::from("--shard"));
        args.push(OsString::from(format!("{shard_id}={}", replicas.join(","))));
    }
    if let Some(merger) = cluster.process(Role::Merger) {
        args.push(OsString::from("--merger"));
        args.push(OsString::from(format!("http://{}", merger.addr)));
    }
    Ok(args)
}

/// Polls `addr`'s `grpc.health.v1` until `service` is SERVING, or fails at
/// `deadline` saying what it saw last.
pub async fn wait_until_serving(
    addr: SocketAddr,
    service: &str,
    deadline: Instant,
) -> anyhow::Result<()> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .context("the address is not a URL")?
        .connect_timeout(HEALTH_ATTEMPT_LIMIT)
        .timeout(HEALTH_ATTEMPT_LIMIT);
    let started = Instant::now();
    loop {
        let problem = match check_health(&endpoint, service).await {
            Ok(ServingStatus::Serving) => return Ok(()),
            Ok(status) => format!("health is {}", status.as_str_name()),
            Err(problem) => problem,
        };
        if Instant::now() + HEALTH_POLL_INTERVAL >= deadline {
            bail!(
                "{service} at {addr} is not SERVING after {:.1?}: {problem}",
                started.elapsed()
            );
        }
        tokio::time::sleep(HEALTH_POLL_INTERVAL).await;
    }
}

async fn check_health(endpoint: &Endpoint, service: &str) -> Result<ServingStatus, String> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| error.to_string())?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
}
