//! The payloads the kit sends and how it judges the answers, per workload:
//! the reference search workload (`fanout.search.v1`), or any other the kit
//! knows. A leaf's workload is read off its `Info.capabilities`.

use fanout_proto::Any;
use fanout_proto::any::{self, type_url};
use fanout_proto::knn::v1::{KnnRequest, KnnResponse, Neighbor};
use fanout_proto::search::v1::{
    FetchRequest, FetchResponse, ShardHit, ShardSearchRequest, ShardSearchResponse,
};
use std::cmp::Ordering;

/// Words of any English text: a query of them matches most documents, and
/// all of them together make a query that keeps a leaf busy.
const COMMON_WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "that",
    "this",
    "it",
    "be",
    "are",
    "was",
    "or",
    "an",
    "which",
    "not",
    "have",
    "has",
    "but",
    "can",
    "all",
    "new",
    "more",
    "one",
    "two",
    "other",
    "also",
    "use",
    "used",
    "system",
    "time",
    "first",
    "after",
    "data",
    "file",
    "server",
    "user",
    "support",
    "version",
    "program",
    "network",
    "tool",
    "library",
    "package",
    "software",
    "free",
    "open",
    "source",
    "linux",
    "debian",
    "project",
    "development",
    "language",
    "list",
    "work",
    "make",
    "set",
    "run",
    "code",
    "each",
    "about",
    "into",
    "only",
    "many",
    "some",
    "such",
    "when",
    "where",
    "most",
    "over",
    "under",
    "between",
    "world",
    "history",
    "city",
    "state",
    "year",
    "war",
    "people",
    "government",
    "music",
    "film",
    "game",
    "science",
    "water",
    "light",
    "power",
    "energy",
    "art",
    "book",
    "school",
    "university",
    "company",
    "country",
    "river",
    "north",
    "south",
    "east",
    "west",
    "public",
    "national",
    "early",
    "great",
    "high",
    "long",
    "small",
    "large",
    "number",
    "form",
    "part",
    "place",
    "area",
    "group",
    "family",
    "life",
    "name",
    "known",
    "called",
    "based",
    "including",
    "during",
    "within",
];

/// A cheap request, or one that makes the leaf work (for the deadline,
/// cancellation and overload checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weight {
    Light,
    Heavy,
}

impl Weight {
    /// The `k` of a request of this weight.
    pub fn k(self) -> u32 {
        match self {
            Weight::Light => 10,
            Weight::Heavy => 1000,
        }
    }
}

/// The workloads the kit has payloads for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `fanout.search.v1`: `ShardSearchRequest` (and `FetchRequest`) at a
    /// leaf, `ShardSearchResponse` partials merged into the global top k.
    Search,
    /// `fanout.knn.v1`: `KnnRequest` for vectors of `dim` dimensions at a
    /// leaf, `KnnResponse` partials merged into the global k nearest
    /// (distance ascending, ties by id). A merger is checked with any `dim`.
    Knn { dim: usize },
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Search => "search",
            Workload::Knn { .. } => "knn",
        }
    }

    /// The workload a leaf serves, from its `Info.capabilities` (a k-NN
    /// leaf needs its vectors' dimension, which Info does not say).
    pub fn of_leaf(capabilities: &[String], knn_dim: Option<usize>) -> Result<Workload, String> {
        let serves = |url: String| capabilities.contains(&url);
        if serves(type_url::<ShardSearchRequest>()) {
            return Ok(Workload::Search);
        }
        if serves(type_url::<KnnRequest>()) {
            return knn_dim.map(|dim| Workload::Knn { dim }).ok_or_else(|| {
                "a k-NN leaf: pass --knn-dim with its vectors' dimension".to_owned()
            });
        }
        Err(format!(
            "the kit has no payloads for the capabilities {capabilities:?}; it knows fanout.search.v1 and fanout.knn.v1"
        ))
    }

    /// The type URL of the workload's main request.
    pub fn request_url(self) -> String {
        match self {
            Workload::Search => type_url::<ShardSearchRequest>(),
            Workload::Knn { .. } => type_url::<KnnRequest>(),
        }
    }

    /// A request for a leaf, cheap or heavy.
    pub fn leaf_request(self, weight: Weight) -> Any {
        match self {
            Workload::Search => {
                let query = match weight {
                    Weight::Light => "the of and system".to_owned(),
                    Weight::Heavy => COMMON_WORDS.join(" "),
                };
                let k = weight.k();
                any::pack(&ShardSearchRequest {
                    query,
                    k,
                    ..ShardSearchRequest::default()
                })
            }
            Workload::Knn { dim } => any::pack(&KnnRequest {
                vector: (0..dim)
                    .map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0)
                    .collect(),
                k: weight.k(),
            }),
        }
    }

    /// Judges a leaf's answer to [`leaf_request`](Self::leaf_request):
    /// the type it must have and the order its results must be in. On
    /// success, a summary and what a later phase needs (the search hits).
    pub fn judge_leaf_answer(
        self,
        weight: Weight,
        payload: Option<&Any>,
    ) -> Result<Answer, String> {
        let payload = payload.ok_or("the answer carries no payload")?;
        match self {
            Workload::Search => {
                let response: ShardSearchResponse =
                    any::unpack(payload).map_err(|error| error.to_string())?;
                let k = weight.k() as usize;
                if response.hits.len() > k {
                    return Err(format!("{} hits for k = {k}", response.hits.len()));
                }
                if let Some(pair) = response
                    .hits
                    .windows(2)
                    .find(|pair| search_rank(&pair[0], &pair[1]) == Ordering::Greater)
                {
                    return Err(format!(
                        "hits out of order (score descending, ties by id ascending): {:?} ({}) before {:?} ({})",
                        pair[0].id, pair[0].score, pair[1].id, pair[1].score
                    ));
                }
                if let Some(hit) = response.hits.iter().find(|hit| !hit.score.is_finite()) {
                    return Err(format!("hit {:?} has the score {}", hit.id, hit.score));
                }
                Ok(Answer {
                    summary: format!(
                        "ShardSearchResponse: {} hits of {} matching",
                        response.hits.len(),
                        response.total_hits
                    ),
                    hits: response.hits,
                })
            }
            Workload::Knn { .. } => {
                let response: KnnResponse =
                    any::unpack(payload).map_err(|error| error.to_string())?;
                let k = weight.k() as usize;
                if response.neighbors.len() > k {
                    return Err(format!(
                        "{} neighbours for k = {k}",
                        response.neighbors.len()
                    ));
                }
                if let Some(neighbor) = response
                    .neighbors
                    .iter()
                    .find(|neighbor| !(neighbor.distance.is_finite() && neighbor.distance >= 0.0))
                {
                    return Err(format!(
                        "neighbour {:?} is at the distance {}",
                        neighbor.id, neighbor.distance
                    ));
                }
                if let Some(pair) = response
                    .neighbors
                    .windows(2)
                    .find(|pair| knn_rank(&pair[0], &pair[1]) == Ordering::Greater)
                {
                    return Err(format!(
                        "neighbours out of order (distance ascending, ties by id ascending): {:?} ({}) before {:?} ({})",
                        pair[0].id, pair[0].distance, pair[1].id, pair[1].distance
                    ));
                }
                Ok(Answer {
                    summary: format!(
                        "KnnResponse: {} neighbours of {} vectors searched",
                        response.neighbors.len(),
                        response.vectors_searched
                    ),
                    hits: Vec::new(),
                })
            }
        }
    }

    /// The second phase of a workload that has one: `FetchRequest` for the
    /// hits a search found, when the leaf lists it.
    pub fn fetch_request(self, hits: &[ShardHit], generation: &str) -> Option<Any> {
        match self {
            Workload::Search => Some(any::pack(&FetchRequest {
                hits: hits.to_vec(),
                generation: generation.to_owned(),
                ..FetchRequest::default()
            })),
            Workload::Knn { .. } => None,
        }
    }

    pub fn fetch_url(self) -> Option<String> {
        match self {
            Workload::Search => Some(type_url::<FetchRequest>()),
            Workload::Knn { .. } => None,
        }
    }

    /// Judges the answer to [`fetch_request`](Self::fetch_request): one
    /// document per hit, in order, each found.
    pub fn judge_fetch_answer(
        self,
        hits: &[ShardHit],
        payload: Option<&Any>,
    ) -> Result<String, String> {
        let payload = payload.ok_or("the answer carries no payload")?;
        match self {
            Workload::Search => {
                let response: FetchResponse =
                    any::unpack(payload).map_err(|error| error.to_string())?;
                if response.docs.len() != hits.len() {
                    return Err(format!(
                        "{} documents for {} hits",
                        response.docs.len(),
                        hits.len()
                    ));
                }
                for (doc, hit) in response.docs.iter().zip(hits) {
                    if doc.id != hit.id || !doc.found {
                        return Err(format!(
                            "hit {:?} came back as {:?} (found: {})",
                            hit.id, doc.id, doc.found
                        ));
                    }
                }
                let fields: usize = response.docs.iter().map(|doc| doc.fields.len()).sum();
                Ok(format!(
                    "FetchResponse: {} documents found, {fields} stored fields",
                    response.docs.len()
                ))
            }
            Workload::Knn { .. } => Err("the k-NN workload has no second phase".to_owned()),
        }
    }
}

/// A leaf's answer that passed.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub summary: String,
    /// The search hits (empty for other workloads).
    pub hits: Vec<ShardHit>,
}

/// The k-NN workload's order: distance ascending, ties by id ascending.
pub fn knn_rank(a: &Neighbor, b: &Neighbor) -> Ordering {
    a.distance
        .total_cmp(&b.distance)
        .then_with(|| a.id.cmp(&b.id))
}

/// The search workload's order: score descending, ties by id ascending.
pub fn search_rank(a: &ShardHit, b: &ShardHit) -> Ordering {
    b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id))
}

/// A merge the kit plays against a merger: the request, and what each shard
/// answers (`partials[shard]`).
#[derive(Debug, Clone)]
pub struct MergeCase {
    pub request: Any,
    pub partials: Vec<Any>,
}

impl MergeCase {
    pub fn shard_count(&self) -> u32 {
        self.partials.len() as u32
    }
}

/// What a merge of some of the partials must answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Merged {
    /// The search workload's top k: (id, score) in order, and the matches.
    Search {
        hits: Vec<(String, f32)>,
        total_hits: u64,
    },
    /// The k nearest: (id, distance) in order, and the vectors searched.
    Knn {
        neighbors: Vec<(String, f32)>,
        vectors_searched: u64,
    },
}

impl Workload {
    /// Three shards whose answers interleave, with ties on the score that
    /// only the id breaks (`a9` of shard 2 before `b1` of shard 1).
    pub fn merge_case(self) -> MergeCase {
        match self {
            Workload::Search => {
                let shard = |shard_id: u32, total_hits: u64, hits: &[(&str, f32)]| {
                    any::pack(&ShardSearchResponse {
                        hits: hits
                            .iter()
                            .enumerate()
                            .map(|(doc_id, (id, score))| ShardHit {
                                score: *score,
                                id: (*id).to_owned(),
                                shard_id,
                                segment_ord: 0,
                                doc_id: doc_id as u32,
                            })
                            .collect(),
                        total_hits,
                        generation: "conformance".to_owned(),
                        docs_searched: 100,
                    })
                };
                MergeCase {
                    request: any::pack(&ShardSearchRequest {
                        query: "conformance".to_owned(),
                        k: 5,
                        ..ShardSearchRequest::default()
                    }),
                    partials: vec![
                        shard(0, 30, &[("a0", 9.0), ("a1", 5.0), ("a2", 1.0)]),
                        shard(1, 20, &[("b0", 8.0), ("b1", 5.0)]),
                        shard(2, 10, &[("c0", 7.0), ("a9", 5.0), ("c2", 0.5)]),
                    ],
                }
            }
            Workload::Knn { .. } => {
                let shard = |shard_id: u32, vectors_searched: u64, nearest: &[(&str, f32)]| {
                    any::pack(&KnnResponse {
                        neighbors: nearest
                            .iter()
                            .map(|(id, distance)| Neighbor {
                                id: (*id).to_owned(),
                                distance: *distance,
                                shard_id,
                            })
                            .collect(),
                        vectors_searched,
                    })
                };
                MergeCase {
                    request: any::pack(&KnnRequest {
                        vector: vec![0.0; 4],
                        k: 5,
                    }),
                    partials: vec![
                        shard(0, 30, &[("a0", 0.5), ("a1", 2.0), ("a2", 9.0)]),
                        shard(1, 20, &[("b0", 1.0), ("b1", 2.0)]),
                        shard(2, 10, &[("c0", 1.5), ("a9", 2.0), ("c2", 9.5)]),
                    ],
                }
            }
        }
    }

    /// The right merge of the partials of `shards` (computed here, from the
    /// workload's documented rule).
    pub fn expected(self, case: &MergeCase, shards: &[u32]) -> Merged {
        match self {
            Workload::Search => {
                let request: ShardSearchRequest =
                    any::unpack(&case.request).expect("the kit's own request");
                let mut hits = Vec::new();
                let mut total_hits = 0;
                for shard in shards {
                    let partial: ShardSearchResponse = any::unpack(&case.partials[*shard as usize])
                        .expect("the kit's own partial");
                    hits.extend(partial.hits);
                    total_hits += partial.total_hits;
                }
                hits.sort_by(search_rank);
                hits.truncate(request.k as usize);
                Merged::Search {
                    hits: hits.into_iter().map(|hit| (hit.id, hit.score)).collect(),
                    total_hits,
                }
            }
            Workload::Knn { .. } => {
                let request: KnnRequest =
                    any::unpack(&case.request).expect("the kit's own request");
                let mut nearest = Vec::new();
                let mut vectors_searched = 0;
                for shard in shards {
                    let partial: KnnResponse = any::unpack(&case.partials[*shard as usize])
                        .expect("the kit's own partial");
                    nearest.extend(partial.neighbors);
                    vectors_searched += partial.vectors_searched;
                }
                nearest.sort_by(knn_rank);
                nearest.truncate(request.k as usize);
                Merged::Knn {
                    neighbors: nearest
                        .into_iter()
                        .map(|neighbor| (neighbor.id, neighbor.distance))
                        .collect(),
                    vectors_searched,
                }
            }
        }
    }

    /// Compares a merger's result with the right one.
    pub fn judge_merged(self, expected: &Merged, payload: Option<&Any>) -> Result<String, String> {
        let payload = payload.ok_or("the result carries no payload")?;
        match (self, expected) {
            (Workload::Search, Merged::Search { hits, total_hits }) => {
                let merged: ShardSearchResponse =
                    any::unpack(payload).map_err(|error| error.to_string())?;
                let got: Vec<(String, f32)> = merged
                    .hits
                    .iter()
                    .map(|hit| (hit.id.clone(), hit.score))
                    .collect();
                if &got != hits {
                    return Err(format!("merged hits {got:?}, expected {hits:?}"));
                }
                if merged.total_hits != *total_hits {
                    return Err(format!(
                        "total_hits {}, expected the sum {total_hits}",
                        merged.total_hits
                    ));
                }
                Ok(ranked("top", &got))
            }
            (
                Workload::Knn { .. },
                Merged::Knn {
                    neighbors,
                    vectors_searched,
                },
            ) => {
                let merged: KnnResponse =
                    any::unpack(payload).map_err(|error| error.to_string())?;
                let got: Vec<(String, f32)> = merged
                    .neighbors
                    .iter()
                    .map(|neighbor| (neighbor.id.clone(), neighbor.distance))
                    .collect();
                if &got != neighbors {
                    return Err(format!("merged neighbours {got:?}, expected {neighbors:?}"));
                }
                if merged.vectors_searched != *vectors_searched {
                    return Err(format!(
                        "vectors_searched {}, expected the sum {vectors_searched}",
                        merged.vectors_searched
                    ));
                }
                Ok(ranked("nearest", &got))
            }
            (workload, expected) => Err(format!(
                "the {} workload cannot judge {expected:?}",
                workload.name()
            )),
        }
    }
}

/// `top 3: a0 b0 c0`, or `none`.
fn ranked(what: &str, results: &[(String, f32)]) -> String {
    if results.is_empty() {
        return "none".to_owned();
    }
    let ids: Vec<&str> = results.iter().map(|(id, _)| id.as_str()).collect();
    format!("{what} {}: {}", ids.len(), ids.join(" "))
}
