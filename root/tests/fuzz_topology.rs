//! Fuzz target of the topology file and the `--shard` flags, as property
//! tests: any text is a topology or an error naming what is wrong, never a
//! panic; and a topology made from valid parts always loads, with exactly
//! its shards and replicas.
//!
//! A long run: `PROPTEST_CASES=100000 cargo test --release -p fanout-root --test fuzz_topology`.

use fanout_root::Topology;
use proptest::prelude::*;

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u8..=254, 1u16..=65535).prop_map(|(host, port)| format!("127.0.0.{host}:{port}")),
        ("[a-z][a-z0-9-]{0,12}", 1u16..=65535).prop_map(|(host, port)| format!("{host}:{port}")),
        ("[a-z]{1,8}", 1u16..=65535).prop_map(|(host, port)| format!("http://{host}:{port}")),
    ]
}

proptest! {
    #[test]
    fn any_text_is_a_topology_or_an_error(text in "\\PC{0,400}") {
        if let Err(error) = Topology::from_toml_str(&text) {
            prop_assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn toml_shaped_text_is_a_topology_or_an_error(
        shards in proptest::collection::vec(
            (any::<i64>(), proptest::collection::vec("\\PC{0,20}", 0..4)),
            0..6,
        ),
    ) {
        let mut text = String::new();
        for (id, replicas) in &shards {
            let replicas: Vec<String> = replicas.iter().map(|replica| format!("{replica:?}")).collect();
            text.push_str(&format!("[[shards]]\nid = {id}\nreplicas = [{}]\n", replicas.join(", ")));
        }
        if let Err(error) = Topology::from_toml_str(&text) {
            prop_assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn a_topology_of_valid_parts_loads_whole(
        replicas in proptest::collection::vec(
            proptest::collection::btree_set(address(), 1..4),
            1..8,
        ),
    ) {
        let mut text = String::new();
        let mut flags = Vec::new();
        for (id, shard) in replicas.iter().enumerate() {
            let quoted: Vec<String> = shard.iter().map(|replica| format!("{replica:?}")).collect();
            text.push_str(&format!("[[shards]]\nid = {id}\nreplicas = [{}]\n", quoted.join(", ")));
            flags.push(format!("{id}={}", shard.iter().cloned().collect::<Vec<_>>().join(",")));
        }
        for topology in [Topology::from_toml_str(&text), Topology::from_shard_flags(&flags)] {
            let topology = topology.map_err(|error| TestCaseError::fail(error.to_string()))?;
            prop_assert_eq!(topology.shards.len(), replicas.len());
            for (shard, expected) in topology.shards.iter().zip(&replicas) {
                prop_assert_eq!(shard.replicas.len(), expected.len());
            }
        }
    }

    #[test]
    fn any_shard_flag_is_a_topology_or_an_error(flags in proptest::collection::vec("\\PC{0,40}", 0..5)) {
        if let Err(error) = Topology::from_shard_flags(&flags) {
            prop_assert!(!error.to_string().is_empty());
        }
    }
}
