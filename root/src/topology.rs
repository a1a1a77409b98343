//! Which leaf replicas serve which shard: read from a TOML file or from
//! `--shard` flags, and validated before anything connects.
//!
//! ```toml
//! [[shards]]
//! id = 0
//! replicas = ["127.0.0.1:7001", "127.0.0.1:7002"]
//!
//! [[shards]]
//! id = 1
//! replicas = ["http://127.0.0.1:7003"]
//! ```
//!
//! Shard ids must be `0..S`, each exactly once, each with at least one
//! replica. Addresses are `host:port` or `http://host:port`, stored in the
//! `http://host:port` form; or `dns:host:port` (also `dns:///host:port`),
//! one entry for every address the name resolves to, re-resolved while the
//! root runs (see [`crate::discovery`]):
//!
//! ```toml
//! [[shards]]
//! id = 0
//! replicas = ["dns:leaf-0:7000"]
//! ```

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

use crate::error::RootError;

/// Every shard and its replicas; `shards[i].shard_id == i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub shards: Vec<ShardReplicas>,
}

/// The interchangeable leaf replicas serving one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardReplicas {
    pub shard_id: u32,
    /// `http://host:port` (or `host:port` before validation).
    pub replicas: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyFile {
    shards: Vec<ShardEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardEntry {
    id: u32,
    replicas: Vec<String>,
}

impl Topology {
    /// Reads and validates a TOML topology file.
    pub fn from_toml_file(path: &Path) -> Result<Topology, RootError> {
        let text = std::fs::read_to_string(path).map_err(|source| RootError::TopologyRead {
            path: path.to_owned(),
            source,
        })?;
        Topology::from_toml_str(&text)
    }

    /// Parses and validates TOML topology text.
    pub fn from_toml_str(text: &str) -> Result<Topology, RootError> {
        let file: TopologyFile =
            toml::from_str(text).map_err(|error| RootError::TopologyParse {
                reason: toml_error_reason(text, &error),
            })?;
        let shards = file
            .shards
            .into_iter()
            .map(|entry| ShardReplicas {
                shard_id: entry.id,
                replicas: entry.replicas,
            })
            .collect();
        Topology::validated(shards)
    }

    /// Builds a topology from flags such as `0=127.0.0.1:7001,127.0.0.1:7002`,
    /// one per shard.
    pub fn from_shard_flags(flags: &[String]) -> Result<Topology, RootError> {
        let mut shards = Vec::with_capacity(flags.len());
        for flag in flags {
            let bad_flag = |reason: &str| RootError::BadShardFlag {
                flag: flag.clone(),
                reason: reason.to_owned(),
            };
            let Some((shard_id, replicas)) = flag.split_once('=') else {
                return Err(bad_flag("expected SHARD_ID=ADDR[,ADDR...]"));
            };
            let shard_id: u32 = shard_id
                .trim()
                .parse()
                .map_err(|_| bad_flag("the shard id must be a non-negative integer"))?;
            let replicas: Vec<String> = replicas
                .split(',')
                .map(str::trim)
                .filter(|address| !address.is_empty())
                .map(str::to_owned)
                .collect();
            shards.push(ShardReplicas { shard_id, replicas });
        }
        Topology::validated(shards)
    }

    /// Checks the shard ids, replica lists and addresses, orders the shards
    /// by id and normalizes every address to `http://host:port`.
    pub fn validated(mut shards: Vec<ShardReplicas>) -> Result<Topology, RootError> {
        if shards.is_empty() {
            return Err(RootError::NoShards);
        }
        shards.sort_by_key(|shard| shard.shard_id);
        for pair in shards.windows(2) {
            if pair[0].shard_id == pair[1].shard_id {
                return Err(RootError::DuplicateShard {
                    shard_id: pair[0].shard_id,
                });
            }
        }
        let shard_count = shards.len() as u32;
        for (expected, shard) in (0..shard_count).zip(&shards) {
            if shard.shard_id != expected {
                return Err(RootError::MissingShard {
                    shard_id: expected,
                    shard_count,
                });
            }
        }
        for shard in &mut shards {
            shard.replicas = normalized_replicas(shard)?;
        }
        Ok(Topology { shards })
    }

    pub fn shard_count(&self) -> u32 {
        self.shards.len() as u32
    }
}

/// The parser's message with the line it refers to, on one line.
fn toml_error_reason(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim();
    match error.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message.to_owned(),
    }
}

fn normalized_replicas(shard: &ShardReplicas) -> Result<Vec<String>, RootError> {
    if shard.replicas.is_empty() {
        return Err(RootError::NoReplicas {
            shard_id: shard.shard_id,
        });
    }
    let mut seen = HashSet::new();
    let mut normalized = Vec::with_capacity(shard.replicas.len());
    for address in &shard.replicas {
        let url = normalized_entry(address).map_err(|reason| RootError::BadReplicaAddress {
            shard_id: shard.shard_id,
            address: address.clone(),
            reason,
        })?;
        if !seen.insert(url.clone()) {
            return Err(RootError::DuplicateReplica {
                shard_id: shard.shard_id,
                address: address.clone(),
            });
        }
        normalized.push(url);
    }
    Ok(normalized)
}

/// A topology entry in its stored form: `http://host:port`, or
/// `dns:host:port` for a DNS name.
fn normalized_entry(address: &str) -> Result<String, String> {
    match address.trim().strip_prefix("dns:") {
        Some(rest) => {
            let (host, port) = dns_host_port(rest)?;
            Ok(format!("dns:{host}:{port}"))
        }
        None => normalized_replica_url(address),
    }
}

/// The host and port of a `dns:` entry (what follows `dns:`): `host:port`
/// or `///host:port`; a DNS server of its own (`//server/host:port`) is
/// not supported.
pub(crate) fn dns_host_port(rest: &str) -> Result<(String, u16), String> {
    let name = match rest.strip_prefix("//") {
        Some(with_authority) => match with_authority.strip_prefix('/') {
            Some(name) => name,
            None => {
                return Err(
                    "a DNS server of its own (dns://server/name:port) is not supported; use dns:name:port"
                        .to_owned(),
                );
            }
        },
        None => rest,
    };
    let Some((host, port)) = name.rsplit_once(':') else {
        return Err("expected dns:host:port".to_owned());
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|port| *port > 0)
        .ok_or_else(|| format!("{port:?} is not a port"))?;
    let host = host.trim_end_matches('.');
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !valid {
        return Err(format!("{host:?} is not a DNS name"));
    }
    Ok((host.to_ascii_lowercase(), port))
}

pub(crate) use fanout_runtime::client::grpc_url as normalized_replica_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_good_toml_in_any_shard_order() {
        let topology = Topology::from_toml_str(
            r#"
            [[shards]]
            id = 1
            replicas = ["http://127.0.0.1:7003"]

            [[shards]]
            id = 0
            replicas = ["127.0.0.1:7001", "localhost:7002"]
            "#,
        )
        .unwrap();
        assert_eq!(
            topology.shards,
            vec![
                ShardReplicas {
                    shard_id: 0,
                    replicas: vec![
                        "http://127.0.0.1:7001".into(),
                        "http://localhost:7002".into()
                    ],
                },
                ShardReplicas {
                    shard_id: 1,
                    replicas: vec!["http://127.0.0.1:7003".into()],
                },
            ]
        );
    }

    #[test]
    fn rejects_unknown_fields() {
        let error = Topology::from_toml_str(
            "[[shards]]\nid = 0\nreplicas = [\"127.0.0.1:1\"]\nweight = 3\n",
        )
        .unwrap_err();
        assert!(error.to_string().contains("weight"), "{error}");
        let error = Topology::from_toml_str("hedging = true\n[[shards]]\nid = 0\nreplicas = []\n")
            .unwrap_err();
        assert!(error.to_string().contains("hedging"), "{error}");
    }

    #[test]
    fn rejects_duplicate_and_missing_shards() {
        let duplicate =
            "[[shards]]\nid = 0\nreplicas = [\"a:1\"]\n[[shards]]\nid = 0\nreplicas = [\"b:1\"]\n";
        assert!(matches!(
            Topology::from_toml_str(duplicate),
            Err(RootError::DuplicateShard { shard_id: 0 })
        ));
        let gap =
            "[[shards]]\nid = 0\nreplicas = [\"a:1\"]\n[[shards]]\nid = 2\nreplicas = [\"b:1\"]\n";
        let error = Topology::from_toml_str(gap).unwrap_err();
        assert!(
            matches!(
                error,
                RootError::MissingShard {
                    shard_id: 1,
                    shard_count: 2
                }
            ),
            "{error}"
        );
        assert!(matches!(
            Topology::from_toml_str("shards = []"),
            Err(RootError::NoShards)
        ));
    }

    #[test]
    fn rejects_shards_without_replicas_and_bad_addresses() {
        assert!(matches!(
            Topology::from_toml_str("[[shards]]\nid = 0\nreplicas = []\n"),
            Err(RootError::NoReplicas { shard_id: 0 })
        ));
        for bad in [
            "127.0.0.1",
            "https://a:1",
            "http://a:1/path",
            "a:notaport",
            "ftp://a:1",
            " ",
        ] {
            let text = format!("[[shards]]\nid = 0\nreplicas = [{bad:?}]\n");
            let error = Topology::from_toml_str(&text).unwrap_err();
            assert!(
                matches!(error, RootError::BadReplicaAddress { .. }),
                "{bad:?} gave {error}"
            );
        }
        let twice = "[[shards]]\nid = 0\nreplicas = [\"a:1\", \"http://a:1\"]\n";
        assert!(matches!(
            Topology::from_toml_str(twice),
            Err(RootError::DuplicateReplica { shard_id: 0, .. })
        ));
    }

    #[test]
    fn parses_shard_flags() {
        let flags = vec![
            "1=127.0.0.1:7003".to_owned(),
            "0=127.0.0.1:7001, http://127.0.0.1:7002".to_owned(),
        ];
        let topology = Topology::from_shard_flags(&flags).unwrap();
        assert_eq!(topology.shard_count(), 2);
        assert_eq!(
            topology.shards[0].replicas,
            vec!["http://127.0.0.1:7001", "http://127.0.0.1:7002"]
        );
        assert_eq!(topology.shards[1].replicas, vec!["http://127.0.0.1:7003"]);
    }

    #[test]
    fn rejects_bad_shard_flags() {
        for bad in ["127.0.0.1:7001", "x=127.0.0.1:7001", "-1=a:1"] {
            let error = Topology::from_shard_flags(&[bad.to_owned()]).unwrap_err();
            assert!(
                matches!(error, RootError::BadShardFlag { .. }),
                "{bad:?} gave {error}"
            );
        }
        assert!(matches!(
            Topology::from_shard_flags(&["0=".to_owned()]),
            Err(RootError::NoReplicas { shard_id: 0 })
        ));
        assert!(matches!(
            Topology::from_shard_flags(&["1=a:1".to_owned()]),
            Err(RootError::MissingShard { shard_id: 0, .. })
        ));
        assert!(matches!(
            Topology::from_shard_flags(&[]),
            Err(RootError::NoShards)
        ));
    }

    #[test]
    fn reads_a_file_and_names_a_missing_one() {
        let path =
            std::env::temp_dir().join(format!("fanout-topology-{}.toml", std::process::id()));
        std::fs::write(&path, "[[shards]]\nid = 0\nreplicas = [\"127.0.0.1:9\"]\n").unwrap();
        let topology = Topology::from_toml_file(&path).unwrap();
        assert_eq!(topology.shards[0].replicas, vec!["http://127.0.0.1:9"]);
        std::fs::remove_file(&path).unwrap();
        let error = Topology::from_toml_file(&path).unwrap_err();
        assert!(
            error.to_string().contains("cannot read topology file"),
            "{error}"
        );
    }

    #[test]
    fn dns_entries_are_normalized_and_bad_ones_refused() {
        let topology = Topology::from_shard_flags(&[
            "0=dns:Leaf-0:7000".to_owned(),
            "1=dns:///leaf-1.fanout.svc.cluster.local.:7000,127.0.0.1:7001".to_owned(),
        ])
        .unwrap();
        assert_eq!(topology.shards[0].replicas, vec!["dns:leaf-0:7000"]);
        assert_eq!(
            topology.shards[1].replicas,
            vec![
                "dns:leaf-1.fanout.svc.cluster.local:7000",
                "http://127.0.0.1:7001"
            ]
        );
        for (flag, reason) in [
            ("0=dns:leaf-0", "host:port"),
            ("0=dns:leaf-0:0", "port"),
            ("0=dns:leaf-0:http", "port"),
            ("0=dns::7000", "DNS name"),
            ("0=dns:le af:7000", "DNS name"),
            ("0=dns://8.8.8.8/leaf:7000", "not supported"),
        ] {
            let error = Topology::from_shard_flags(&[flag.to_owned()]).unwrap_err();
            assert!(error.to_string().contains(reason), "{flag}: {error}");
        }
        let error =
            Topology::from_shard_flags(&["0=dns:leaf:1,dns:LEAF:1".to_owned()]).unwrap_err();
        assert!(error.to_string().contains("twice"), "{error}");
    }
}
