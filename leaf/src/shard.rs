//! One opened shard: searching it (phase one) and fetching stored fields of
//! the global winners (phase two). Everything here is synchronous CPU work;
//! the service runs it on the leaf's rayon pool.
//!
//! Search scores with the build's global statistics (`global-stats.bin`), so
//! that its scores equal those of one index over the whole corpus; a shard
//! without them is refused when it opens.

use std::path::{Path, PathBuf};

use fanout_proto::search::limits::QueryLimits;

use fanout_proto::search::v1::{
    FetchRequest, FetchResponse, FetchedDoc, ShardHit, ShardSearchRequest, ShardSearchResponse,
};
use tantivy::collector::Collector;
use tantivy::query::{EnableScoring, Query};
use tantivy::schema::{Field, IndexRecordOption, Value};
use tantivy::snippet::SnippetGenerator;
use tantivy::{
    DocAddress, DocSet, Index, IndexReader, ReloadPolicy, Searcher, TERMINATED, TantivyDocument,
    Term,
};

use crate::LeafError;
use crate::collector::{SearchAfterKey, TopHits, TopHitsCollector};
use crate::global_stats::{ScoringStatistics, ShardStatistics};
use crate::manifest::{
    INDEX_MANIFEST_FILE_NAME, ShardManifest, read_index_manifest, read_shard_manifest,
};
use crate::query::{QueryBudget, QueryMode, apply_filters, build_query_within};
use crate::schema::{ID_FIELD, SearchFields, TITLE_FIELD, register_tokenizers};

/// Hits per request when the request says 0.
pub const DEFAULT_K: u32 = 10;
/// The most hits one request may ask for.
pub const MAX_K: u32 = 10_000;
/// Longest snippet, in characters.
pub const SNIPPET_MAX_CHARS: usize = 200;
/// The most filters one search may carry.
pub const MAX_FILTERS: usize = 64;
/// Stored fields a fetch returns when it names none.
pub const DEFAULT_FETCH_FIELDS: [&str; 2] = [ID_FIELD, TITLE_FIELD];

/// Opens an index written by `build_index` (one shard directory, or the only
/// shard of a one-shard build), read-only, with fanout's analyzers
/// registered, for use as the single-index reference.
pub fn open_reference_index(dir: &Path) -> Result<Index, LeafError> {
    let index = Index::open(crate::read_only::ReadOnlyDirectory::open(dir)?)?;
    register_tokenizers(&index);
    SearchFields::from_schema(&index.schema())?;
    Ok(index)
}

/// A shard opened for searching. The index never changes after its build,
/// so one searcher serves the leaf's whole life.
pub struct ShardSearcher {
    dir: PathBuf,
    manifest: ShardManifest,
    index: Index,
    /// Keeps the searcher's segments open.
    _reader: IndexReader,
    searcher: Searcher,
    fields: SearchFields,
    statistics: ScoringStatistics,
    limits: QueryLimits,
}

impl ShardSearcher {
    /// Opens the shard in `shard_dir`: its manifest, its index and its global
    /// statistics. Refused unless the shard belongs to a complete build (the
    /// build's `index.json` beside it lists it, with the same generation)
    /// and has the build's global statistics: a shard scoring with its own
    /// statistics would rank differently from its siblings.
    pub fn open(shard_dir: &Path) -> Result<ShardSearcher, LeafError> {
        let manifest = read_shard_manifest(shard_dir)?;
        check_build_is_complete(shard_dir, &manifest)?;
        let index = open_reference_index(shard_dir)?;
        let fields = SearchFields::from_schema(&index.schema())?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let searcher = reader.searcher();
        let Some(statistics) = ShardStatistics::load_for_shard(shard_dir, &manifest, &searcher)?
        else {
            return Err(LeafError::GlobalStatistics {
                path: shard_dir.join(crate::GLOBAL_STATS_FILE_NAME),
                reason: "missing: the shard's scores would not be comparable with its siblings'; \
                         rebuild the index with fanout index"
                    .to_owned(),
            });
        };
        tracing::info!(
            shard = manifest.shard_id,
            docs = searcher.num_docs(),
            corpus_docs = statistics.total_docs(),
            terms = statistics.entry_count(),
            "scoring with the build's global statistics"
        );
        if searcher.num_docs() != manifest.doc_count {
            tracing::warn!(
                shard = manifest.shard_id,
                index_docs = searcher.num_docs(),
                manifest_docs = manifest.doc_count,
                "the index and its manifest disagree on the number of documents"
            );
        }
        Ok(ShardSearcher {
            dir: shard_dir.to_path_buf(),
            manifest,
            index,
            _reader: reader,
            searcher,
            fields,
            statistics,
            limits: QueryLimits::DEFAULT,
        })
    }

    /// The same shard with `limits` on the queries it accepts.
    pub fn with_query_limits(mut self, limits: QueryLimits) -> ShardSearcher {
        self.limits = limits;
        self
    }

    pub fn query_limits(&self) -> &QueryLimits {
        &self.limits
    }

    fn budget<'a>(&'a self, is_cancelled: &'a dyn Fn() -> bool) -> QueryBudget<'a> {
        QueryBudget {
            limits: &self.limits,
            is_cancelled,
        }
    }

    pub fn manifest(&self) -> &ShardManifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Documents in this shard.
    pub fn doc_count(&self) -> u64 {
        self.searcher.num_docs()
    }

    /// Phase one: this shard's top k for the request. `is_cancelled` is
    /// checked between segments; once it says true the search stops with
    /// [`LeafError::Cancelled`].
    pub fn search(
        &self,
        request: &ShardSearchRequest,
        is_cancelled: &dyn Fn() -> bool,
    ) -> Result<ShardSearchResponse, LeafError> {
        let k = match request.k {
            0 => DEFAULT_K,
            k if k > MAX_K => {
                return Err(LeafError::InvalidRequest(format!(
                    "k is {k} but may be at most {MAX_K}"
                )));
            }
            k => k,
        };
        let mode = query_mode(request.mode)?;
        let search_after = match &request.search_after {
            None => None,
            Some(after) if after.score.is_nan() => {
                return Err(LeafError::InvalidRequest(
                    "search_after score is NaN".into(),
                ));
            }
            Some(after) => Some(SearchAfterKey {
                score: after.score,
                id: after.id.clone(),
            }),
        };
        if request.filters.len() > MAX_FILTERS {
            return Err(LeafError::InvalidRequest(format!(
                "{} filters, more than the limit of {MAX_FILTERS}",
                request.filters.len()
            )));
        }
        let query = build_query_within(
            &self.index,
            &request.query,
            mode,
            &self.budget(is_cancelled),
        )?;
        let query = apply_filters(query, &request.filters, &self.fields)?;
        let top = self.collect_top_hits(query.as_ref(), k as usize, search_after, is_cancelled)?;
        let shard_id = self.manifest.shard_id;
        Ok(ShardSearchResponse {
            hits: top
                .hits
                .into_iter()
                .map(|hit| ShardHit {
                    score: hit.score,
                    id: hit.id,
                    shard_id,
                    segment_ord: hit.segment_ord,
                    doc_id: hit.doc_id,
                })
                .collect(),
            total_hits: top.total_hits,
            generation: self.manifest.generation.clone(),
            docs_searched: self.doc_count(),
        })
    }

    fn collect_top_hits(
        &self,
        query: &dyn Query,
        k: usize,
        search_after: Option<SearchAfterKey>,
        is_cancelled: &dyn Fn() -> bool,
    ) -> Result<TopHits, LeafError> {
        let scoring =
            EnableScoring::enabled_from_statistics_provider(&self.statistics, &self.searcher);
        let weight = query.weight(scoring).map_err(query_error)?;
        let collector = TopHitsCollector::new(k, search_after);
        let mut fruits = Vec::with_capacity(self.searcher.segment_readers().len());
        for (segment_ord, segment) in (0u32..).zip(self.searcher.segment_readers()) {
            if is_cancelled() {
                return Err(LeafError::Cancelled);
            }
            fruits.push(collector.collect_segment(weight.as_ref(), segment_ord, segment)?);
        }
        Ok(collector.merge_fruits(fruits)?)
    }

    /// Phase two: the stored fields (and snippets) of `request.hits`, in
    /// order. Addresses are trusted only for this shard's generation and only
    /// when the stored id matches; otherwise the document is looked up by id.
    pub fn fetch(
        &self,
        request: &FetchRequest,
        is_cancelled: &dyn Fn() -> bool,
    ) -> Result<FetchResponse, LeafError> {
        if request.hits.len() > MAX_K as usize {
            return Err(LeafError::InvalidRequest(format!(
                "fetch of {} hits, more than the limit of {MAX_K}",
                request.hits.len()
            )));
        }
        let requested_fields = self.requested_fields(&request.fields)?;
        let snippets = if request.snippets {
            let query = build_query_within(
                &self.index,
                &request.query,
                query_mode(request.mode)?,
                &self.budget(is_cancelled),
            )?;
            let mut generator =
                SnippetGenerator::create(&self.searcher, query.as_ref(), self.fields.text)
                    .map_err(query_error)?;
            generator.set_max_num_chars(SNIPPET_MAX_CHARS);
            Some(generator)
        } else {
            None
        };
        let addresses_valid = request.generation == self.manifest.generation;
        let mut docs = Vec::with_capacity(request.hits.len());
        for hit in &request.hits {
            if is_cancelled() {
                return Err(LeafError::Cancelled);
            }
            let document = self.find_document(hit, addresses_valid)?;
            let Some(document) = document else {
                docs.push(FetchedDoc {
                    id: hit.id.clone(),
                    found: false,
                    ..Default::default()
                });
                continue;
            };
            let fields = requested_fields
                .iter()
                .map(|(name, field)| (name.clone(), first_text(&document, *field).to_string()))
                .collect();
            let snippet = snippets
                .as_ref()
                .map(|generator| snippet_html(generator, first_text(&document, self.fields.text)))
                .unwrap_or_default();
            docs.push(FetchedDoc {
                id: hit.id.clone(),
                fields,
                snippet,
                found: true,
            });
        }
        Ok(FetchResponse { docs })
    }

    /// The stored fields a fetch asks for, each once, in the order first asked.
    fn requested_fields(&self, names: &[String]) -> Result<Vec<(String, Field)>, LeafError> {
        let names: Vec<&str> = if names.is_empty() {
            DEFAULT_FETCH_FIELDS.to_vec()
        } else {
            names.iter().map(String::as_str).collect()
        };
        let mut fields: Vec<(String, Field)> = Vec::new();
        for name in names {
            if fields.iter().any(|(known, _)| known == name) {
                continue;
            }
            let Some(field) = self.fields.stored_field(name) else {
                return Err(LeafError::UnknownStoredField {
                    field: name.to_string(),
                });
            };
            fields.push((name.to_string(), field));
        }
        Ok(fields)
    }

    /// The stored document of `hit`: by its address when that is trustworthy
    /// and still holds the same id, else by id; `None` when the id is gone.
    fn find_document(
        &self,
        hit: &ShardHit,
        addresses_valid: bool,
    ) -> Result<Option<TantivyDocument>, LeafError> {
        if addresses_valid && let Some(address) = self.live_address(hit.segment_ord, hit.doc_id) {
            let document: TantivyDocument = self.searcher.doc(address)?;
            if first_text(&document, self.fields.id) == hit.id {
                return Ok(Some(document));
            }
            tracing::debug!(id = %hit.id, "the address holds another document; looking the id up");
        }
        match self.address_of_id(&hit.id)? {
            Some(address) => Ok(Some(self.searcher.doc(address)?)),
            None => Ok(None),
        }
    }

    fn live_address(&self, segment_ord: u32, doc_id: u32) -> Option<DocAddress> {
        let segment = self.searcher.segment_readers().get(segment_ord as usize)?;
        if doc_id >= segment.max_doc() {
            return None;
        }
        if segment
            .alive_bitset()
            .is_some_and(|alive| alive.is_deleted(doc_id))
        {
            return None;
        }
        Some(DocAddress::new(segment_ord, doc_id))
    }

    /// The address of the live document with this id, if any.
    fn address_of_id(&self, id: &str) -> Result<Option<DocAddress>, LeafError> {
        let term = Term::from_field_text(self.fields.id, id);
        for (segment_ord, segment) in (0u32..).zip(self.searcher.segment_readers()) {
            let inverted_index = segment.inverted_index(self.fields.id)?;
            let postings = inverted_index
                .read_postings(&term, IndexRecordOption::Basic)
                .map_err(|error| LeafError::Tantivy(error.into()))?;
            let Some(mut postings) = postings else {
                continue;
            };
            let mut doc = postings.doc();
            while doc != TERMINATED {
                if !segment
                    .alive_bitset()
                    .is_some_and(|alive| alive.is_deleted(doc))
                {
                    return Ok(Some(DocAddress::new(segment_ord, doc)));
                }
                doc = postings.advance();
            }
        }
        Ok(None)
    }
}

/// The query mode of a request's raw enum value.
pub(crate) fn query_mode(raw: i32) -> Result<QueryMode, LeafError> {
    QueryMode::try_from(raw)
        .map_err(|_| LeafError::InvalidRequest(format!("unknown query mode {raw}")))
}

/// The first text value of `field` in `document` ("" when absent).
fn first_text(document: &TantivyDocument, field: Field) -> &str {
    document
        .get_first(field)
        .and_then(|value| value.as_str())
        .unwrap_or("")
}

/// An HTML snippet of `text` with the query's words in `<b>`; when the text
/// holds none of them, its beginning.
fn snippet_html(generator: &SnippetGenerator, text: &str) -> String {
    let snippet = generator.snippet(text);
    if !snippet.is_empty() && !snippet.highlighted().is_empty() {
        return snippet.to_html();
    }
    let mut end = text.len().min(SNIPPET_MAX_CHARS);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    // Cut at the last whitespace so no word is split, when there is one.
    if end < text.len()
        && let Some(space) = text[..end].rfind(char::is_whitespace)
    {
        end = space;
    }
    escape_html(text[..end].trim_end())
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Checks that `shard_dir` is a shard of a finished build: the build writes
/// `index.json` into the folder above the shards last.
fn check_build_is_complete(shard_dir: &Path, manifest: &ShardManifest) -> Result<(), LeafError> {
    let build_dir = shard_dir.parent().unwrap_or(Path::new("."));
    let incomplete = |reason: String| LeafError::Manifest {
        path: build_dir.join(INDEX_MANIFEST_FILE_NAME),
        reason,
    };
    if !build_dir.join(INDEX_MANIFEST_FILE_NAME).exists() {
        return Err(incomplete(
            "missing: the shard is not part of a finished build (fanout index writes it last)"
                .to_owned(),
        ));
    }
    let index = read_index_manifest(build_dir)?;
    if index.generation != manifest.generation {
        return Err(incomplete(format!(
            "it is generation {:?} but the shard is generation {:?}",
            index.generation, manifest.generation
        )));
    }
    if index.shard_count != manifest.shard_count {
        return Err(incomplete(format!(
            "it lists {} shards but the shard belongs to a build of {}",
            index.shard_count, manifest.shard_count
        )));
    }
    Ok(())
}

/// A tantivy error while turning a parsed query into its weight: a query
/// that asks for what the schema cannot do (`title:*` needs a fast field)
/// is the caller's, anything else the shard's.
fn query_error(error: tantivy::TantivyError) -> LeafError {
    match error {
        tantivy::TantivyError::FieldNotFound(field) => LeafError::UnsupportedQuery(format!(
            "no field named {}",
            fanout_proto::status::quote(&field)
        )),
        tantivy::TantivyError::SchemaError(message)
        | tantivy::TantivyError::InvalidArgument(message) => {
            LeafError::UnsupportedQuery(fanout_proto::status::bounded(message))
        }
        other => LeafError::Tantivy(other),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::index_build::{IndexBuildOptions, build_index};
    use crate::manifest::shard_dir_name;
    use fanout_proto::search::v1::SearchAfter;

    /// A one-shard index of a few documents; the directory must outlive it.
    pub(crate) fn small_shard(scratch: &Path) -> ShardSearcher {
        let corpus = scratch.join("corpus.jsonl");
        let documents = [
            (
                "alpha",
                "Rust search",
                "Search engines written in Rust are fast.",
            ),
            (
                "beta",
                "Pasta",
                "Cook <pasta> & serve; nothing about engines.",
            ),
            ("gamma", "Rust", "Rust is a systems programming language."),
        ];
        let lines: String = documents
            .iter()
            .map(|(id, title, text)| {
                serde_json::json!({"id": id, "title": title, "text": text}).to_string() + "\n"
            })
            .collect();
        std::fs::write(&corpus, lines).unwrap();
        let out_dir = scratch.join("index");
        build_index(&IndexBuildOptions {
            input: corpus,
            out_dir: out_dir.clone(),
            shards: 1,
            threads: 1,
            writer_memory_bytes: 64 << 20,
            ..IndexBuildOptions::default()
        })
        .unwrap();
        ShardSearcher::open(&out_dir.join(shard_dir_name(0))).unwrap()
    }

    fn natural(query: &str, k: u32) -> ShardSearchRequest {
        ShardSearchRequest {
            query: query.into(),
            k,
            ..Default::default()
        }
    }

    #[test]
    fn k_zero_means_the_default_and_search_after_must_be_a_number() {
        let scratch = tempfile::tempdir().unwrap();
        let shard = small_shard(scratch.path());
        let answer = shard.search(&natural("rust", 0), &|| false).unwrap();
        assert_eq!(answer.hits.len(), 2);
        assert_eq!(answer.total_hits, 2);
        let request = ShardSearchRequest {
            search_after: Some(SearchAfter {
                score: f32::NAN,
                id: "alpha".into(),
            }),
            ..natural("rust", 10)
        };
        let error = shard.search(&request, &|| false).unwrap_err();
        assert!(matches!(error, LeafError::InvalidRequest(_)), "{error}");
    }

    #[test]
    fn a_cancelled_search_stops() {
        let scratch = tempfile::tempdir().unwrap();
        let shard = small_shard(scratch.path());
        let error = shard.search(&natural("rust", 10), &|| true).unwrap_err();
        assert!(matches!(error, LeafError::Cancelled), "{error}");
        let fetch = FetchRequest {
            hits: vec![ShardHit::default()],
            ..Default::default()
        };
        assert!(matches!(
            shard.fetch(&fetch, &|| true),
            Err(LeafError::Cancelled)
        ));
    }

    #[test]
    fn fetch_checks_the_address_against_the_id() {
        let scratch = tempfile::tempdir().unwrap();
        let shard = small_shard(scratch.path());
        let answer = shard.search(&natural("pasta", 10), &|| false).unwrap();
        let pasta = answer.hits[0].clone();
        assert_eq!(pasta.id, "beta");
        // Right generation, but the address of another document (or none).
        let mut wrong_address = pasta.clone();
        wrong_address.doc_id = (pasta.doc_id + 1) % 3;
        let mut no_address = pasta.clone();
        no_address.segment_ord = 99;
        let fetch = FetchRequest {
            hits: vec![wrong_address, no_address, pasta],
            generation: shard.manifest().generation.clone(),
            ..Default::default()
        };
        let fetched = shard.fetch(&fetch, &|| false).unwrap();
        for document in &fetched.docs {
            assert!(document.found);
            assert_eq!(document.fields["id"], "beta");
            assert_eq!(document.fields["title"], "Pasta");
        }
    }

    #[test]
    fn snippets_highlight_query_words_and_fall_back_to_the_escaped_text() {
        let scratch = tempfile::tempdir().unwrap();
        let shard = small_shard(scratch.path());
        let hits = shard
            .search(&natural("pasta rust", 10), &|| false)
            .unwrap()
            .hits;
        let fetch = FetchRequest {
            hits: hits.clone(),
            generation: shard.manifest().generation.clone(),
            snippets: true,
            query: "engines".into(),
            ..Default::default()
        };
        let fetched = shard.fetch(&fetch, &|| false).unwrap();
        let snippet_of = |id: &str| {
            let position = hits.iter().position(|hit| hit.id == id).unwrap();
            fetched.docs[position].snippet.clone()
        };
        assert!(
            snippet_of("alpha").contains("<b>engines</b>"),
            "{}",
            snippet_of("alpha")
        );
        // "gamma" holds no query word: its text's beginning, escaped.
        assert_eq!(
            snippet_of("gamma"),
            "Rust is a systems programming language."
        );
        assert!(
            snippet_of("beta").contains("&lt;pasta&gt; &amp;"),
            "{}",
            snippet_of("beta")
        );
    }

    #[test]
    fn long_texts_fall_back_to_a_prefix_cut_between_words() {
        let text = "word ".repeat(100);
        let scratch = tempfile::tempdir().unwrap();
        let shard = small_shard(scratch.path());
        let query = crate::build_query(shard.index(), "absent", QueryMode::Natural).unwrap();
        let generator =
            SnippetGenerator::create(&shard.searcher, query.as_ref(), shard.fields.text).unwrap();
        let snippet = snippet_html(&generator, &text);
        assert!(snippet.len() <= SNIPPET_MAX_CHARS);
        assert!(snippet.ends_with("word"), "{snippet:?}");
    }

    #[test]
    fn a_shard_of_an_unfinished_build_or_without_statistics_is_refused() {
        let scratch = tempfile::tempdir().unwrap();
        let shard = small_shard(scratch.path());
        let shard_dir = shard.dir().to_path_buf();
        drop(shard);
        let build_dir = shard_dir.parent().unwrap();

        let stats = shard_dir.join(crate::GLOBAL_STATS_FILE_NAME);
        let saved = std::fs::read(&stats).unwrap();
        std::fs::remove_file(&stats).unwrap();
        let error = ShardSearcher::open(&shard_dir).err().unwrap();
        assert!(
            error.to_string().contains("global-stats.bin: missing"),
            "{error}"
        );
        std::fs::write(&stats, saved).unwrap();

        let index_json = build_dir.join(INDEX_MANIFEST_FILE_NAME);
        std::fs::remove_file(&index_json).unwrap();
        let error = ShardSearcher::open(&shard_dir).err().unwrap();
        assert!(error.to_string().contains("index.json: missing"), "{error}");
    }
}
