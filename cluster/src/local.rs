//! The usual start-up of a local cluster: every leaf and the merger at once,
//! then one or more roots over their announced addresses, each waited for
//! until its `grpc.health.v1` says SERVING ([`crate::health`]).
//!
//! Several roots over the same leaves are how a benchmark compares root
//! policies (hedging off, adaptive, ...) on identical backends without
//! restarting the leaves between variants.

use std::ffi::OsString;
use std::net::SocketAddr;

use anyhow::bail;

use crate::index::ReadyIndex;
use crate::process::{Cluster, Launcher, Role};

/// The service whose health says a root is ready.
pub const SEARCH_SERVICE_NAME: &str = "fanout.search.v1.Search";
/// The service whose health says a leaf is ready.
pub const LEAF_SERVICE_NAME: &str = "fanout.v1.Leaf";
/// The service whose health says a merger is ready.
pub const MERGER_SERVICE_NAME: &str = "fanout.v1.Merger";

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
    start_merger_with(cluster, launcher, &[])
}

/// [`start_merger`] with more flags (TLS, say).
pub fn start_merger_with(
    cluster: &mut Cluster,
    launcher: &Launcher,
    extra: &[OsString],
) -> anyhow::Result<()> {
    let mut args = vec![OsString::from("--listen"), OsString::from("127.0.0.1:0")];
    args.extend_from_slice(extra);
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
        args.push(OsString::from(merger.addr.to_string()));
    }
    Ok(args)
}
