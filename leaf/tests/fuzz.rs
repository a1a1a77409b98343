//! Fuzz targets of the leaf, as property tests: every input a caller
//! controls, thrown at the code that reads it.
//!
//! - the natural-language and syntax query paths (grammar-made and random
//!   queries): never a panic, never a stack overflow (each case runs on a
//!   thread with a small stack, 512 KiB, a quarter of a default thread's: the
//!   query limits alone must keep the parser shallow), and every failure is
//!   the caller's (INVALID_ARGUMENT) or a cancellation;
//! - the corpus line reader: any bytes, any line lengths;
//! - the leaf's payload decoding: any bytes under the type URLs it serves,
//!   through `Leaf/Execute`, answered INVALID_ARGUMENT, never INTERNAL.
//!
//! A short run (proptest's 256 cases each) is part of `cargo test`; a long
//! one: `PROPTEST_CASES=100000 cargo test --release -p fanout-leaf --test fuzz`.

use std::sync::{Arc, OnceLock};

use fanout_leaf::{
    IndexBuildOptions, LeafAdmission, LeafError, QueryMode, ShardSearcher, build_index,
};
use fanout_proto::search::v1::{FetchRequest, ShardSearchRequest};
use fanout_proto::v1::ExecuteRequest;
use fanout_proto::v1::leaf_server::Leaf;
use fanout_runtime::cpu_pool::CpuPool;
use proptest::prelude::*;
use tonic::{Code, Request};

/// One small shard, built once for every case.
fn shard() -> &'static (tempfile::TempDir, Arc<ShardSearcher>) {
    static SHARD: OnceLock<(tempfile::TempDir, Arc<ShardSearcher>)> = OnceLock::new();
    SHARD.get_or_init(|| {
        let scratch = tempfile::tempdir().expect("a temporary folder");
        let corpus = scratch.path().join("corpus.jsonl");
        let lines: String = [
            (
                "a",
                "Rust search engine",
                "Fast full-text search in Rust with tantivy.",
            ),
            (
                "b",
                "Cooking pasta",
                "Boil water, add salt, then the pasta.",
            ),
            (
                "c",
                "Tail latency",
                "Hedged requests cut the tail of search latency.",
            ),
            (
                "d",
                "Ünïcödé ťitle",
                "Text with accents: café, naïve, 東京.",
            ),
        ]
        .iter()
        .map(|(id, title, text)| {
            serde_json::json!({"id": id, "title": title, "text": text}).to_string() + "\n"
        })
        .collect();
        std::fs::write(&corpus, lines).expect("the corpus is written");
        let out_dir = scratch.path().join("index");
        build_index(&IndexBuildOptions {
            input: corpus,
            out_dir: out_dir.clone(),
            shards: 1,
            threads: 1,
            writer_memory_bytes: 32 << 20,
            ..IndexBuildOptions::default()
        })
        .expect("the index builds");
        let shard = ShardSearcher::open(&out_dir.join("shard-0")).expect("the shard opens");
        (scratch, Arc::new(shard))
    })
}

/// Runs `work` on a thread with a small stack: a parser that recursed
/// without bound would overflow it (and abort the test binary).
fn on_a_small_stack<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(work)
        .expect("a thread starts")
        .join()
        .expect("the work did not panic")
}

/// Whether a search failure is one a caller may get: a cancellation, or
/// their own mistake (the kinds `error.rs` maps to INVALID_ARGUMENT).
fn is_callers_error(error: &LeafError) -> bool {
    matches!(
        error,
        LeafError::Cancelled
            | LeafError::QueryHasNoSearchableTerms
            | LeafError::QuerySyntax { .. }
            | LeafError::QueryLimit(_)
            | LeafError::UnsupportedQuery(_)
            | LeafError::UnknownFilterField { .. }
            | LeafError::InvalidRequest(_)
    )
}

fn search(query: String, mode: QueryMode) -> Result<(), String> {
    let shard = Arc::clone(&shard().1);
    on_a_small_stack(move || {
        let request = ShardSearchRequest {
            query,
            mode: mode as i32,
            k: 5,
            ..Default::default()
        };
        match shard.search(&request, &|| false) {
            Ok(_) => Ok(()),
            Err(error) if is_callers_error(&error) => Ok(()),
            Err(error) => Err(format!("{error:?}")),
        }
    })
}

/// Queries in tantivy's syntax, nested up to 40 deep (the limit is 32).
fn syntax_query() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        Just("rust".to_owned()),
        Just("pasta".to_owned()),
        Just("café".to_owned()),
        "[a-z]{1,8}",
        "[a-z]{1,4}\\*",
        "\\PC{1,6}",
    ];
    let leaf = prop_oneof![
        word.clone(),
        word.clone().prop_map(|word| format!("title:{word}")),
        word.clone().prop_map(|word| format!("text:{word}")),
        word.clone().prop_map(|word| format!("nosuch:{word}")),
        word.clone().prop_map(|word| format!("\"{word} {word}\"~2")),
        word.clone().prop_map(|word| format!("{word}^2.5")),
        (word.clone(), word.clone()).prop_map(|(a, b)| format!("[{a} TO {b}]")),
        (word.clone(), word.clone()).prop_map(|(a, b)| format!("title: IN [{a} {b}]")),
        Just("*".to_owned()),
        Just("title:*".to_owned()),
    ];
    leaf.prop_recursive(40, 200, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|query| format!("({query})")),
            inner.clone().prop_map(|query| format!("NOT {query}")),
            inner.clone().prop_map(|query| format!("-{query}")),
            inner.clone().prop_map(|query| format!("+{query}")),
            inner.clone().prop_map(|query| format!("title:({query})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} AND {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} OR {b}")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("{a} {b}")),
        ]
    })
}

/// Deep nests beyond every limit, the shapes of the known requests of death.
fn deep_query() -> impl Strategy<Value = String> {
    (1usize..6000, 0usize..4).prop_map(|(depth, shape)| match shape {
        0 => format!("{}rust", "(".repeat(depth)),
        1 => format!("{}rust{}", "(".repeat(depth), ")".repeat(depth)),
        2 => format!("{}rust", "title:(".repeat(depth)),
        _ => format!("{}rust", "NOT ".repeat(depth)),
    })
}

proptest! {
    #[test]
    fn syntax_queries_never_crash(query in syntax_query()) {
        prop_assert_eq!(search(query, QueryMode::Syntax), Ok(()));
    }

    #[test]
    fn deep_syntax_queries_are_refused_without_recursing(query in deep_query()) {
        prop_assert_eq!(search(query, QueryMode::Syntax), Ok(()));
    }

    #[test]
    fn random_text_never_crashes_either_mode(query in "\\PC{0,300}", syntax in any::<bool>()) {
        let mode = if syntax { QueryMode::Syntax } else { QueryMode::Natural };
        prop_assert_eq!(search(query, mode), Ok(()));
    }

    #[test]
    fn long_natural_queries_stay_within_their_limits(words in proptest::collection::vec("[a-z]{1,12}", 0..3000)) {
        prop_assert_eq!(search(words.join(" "), QueryMode::Natural), Ok(()));
    }

    #[test]
    fn any_payload_bytes_are_invalid_argument_at_worst(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        fetch in any::<bool>(),
    ) {
        let type_url = if fetch {
            fanout_proto::any::type_url::<FetchRequest>()
        } else {
            fanout_proto::any::type_url::<ShardSearchRequest>()
        };
        let code = execute(type_url, bytes);
        prop_assert!(
            matches!(code, Code::Ok | Code::InvalidArgument),
            "{:?}", code
        );
    }
}

/// One `Leaf/Execute` call on the shard's service, on a runtime of its own.
fn execute(type_url: String, value: Vec<u8>) -> Code {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    static SERVICE: OnceLock<fanout_leaf::service::LeafService> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    });
    let service = SERVICE.get_or_init(|| {
        fanout_leaf::service::LeafService::new(
            Arc::clone(&shard().1),
            CpuPool::new("fuzz", 1).expect("a pool"),
            1,
            LeafAdmission::default(),
        )
    });
    let request = ExecuteRequest {
        payload: Some(fanout_proto::Any { type_url, value }),
        shard_id: 0,
        ..Default::default()
    };
    runtime.block_on(async {
        match service.execute(Request::new(request)).await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        }
    })
}
