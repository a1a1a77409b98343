//! Exact global BM25: corpus-wide statistics, each shard holding them for its
//! own terms only.
//!
//! BM25 needs, per query term, the number of documents of the whole corpus
//! holding it, and per field the numbers of documents and of tokens. A shard
//! knows only its own, so per-shard scores would not be comparable. After a
//! build has written every shard, [`ShardStatistics::compute`] sums these
//! numbers over all shards and the build writes into each shard, as
//! `global-stats.bin`, the corpus-wide document frequency of every term *that
//! shard holds*: one number per entry of the shard's own term dictionaries, in
//! their order. The file stores no term: tantivy's term dictionary already
//! maps a term to its ordinal, and a shard never needs the frequency of a term
//! it does not hold (none of its documents can score on it). So the file grows
//! with the shard's own vocabulary, as its index does, and not with the
//! corpus's vocabulary times the shard count.
//!
//! A leaf loads the file when it opens, checks it against the shard
//! ([`ShardStatistics::load_for_shard`]) and hands the result,
//! [`ScoringStatistics`], to tantivy as its [`Bm25StatisticsProvider`]: every
//! shard then scores exactly as one index over the whole corpus would, with
//! no extra round trip per query.
//!
//! The statistics belong to one build and one shard: the file carries the
//! build's generation, the shard's id, and the id and term counts of each of
//! the shard's segments, and a leaf refuses a file that does not match.
//!
//! ## File format (version 2, integers little-endian)
//!
//! ```text
//! magic  "FANOUTGS" (8 bytes)     version u32 = 2
//! generation: len u32, UTF-8 bytes
//! shard_id u32   shard_count u32   total_docs u64
//! field_count u32, then per field (in field id order):
//!   field_id u32   name: len u32, UTF-8 bytes   total_tokens u64
//! segment_count u32, then per segment:
//!   segment id: 32 ASCII hex digits (tantivy's uuid string)
//!   per field, in the order above (the field's term dictionary in the segment):
//!     term_count u64   varints_len u64
//!     block_starts  ceil(term_count / 64) x u32: offset in varints of the
//!                   first frequency of each block of 64 terms
//!     varints       term_count corpus-wide document frequencies, LEB128,
//!                   in term ordinal order
//! checksum u64: FNV-1a 64 (fanout_runtime::hashing) of every byte before it
//! ```
//!
//! Most terms are rare, so most frequencies take one byte; the block starts
//! add 1/16 byte per term. A lookup finds the term's ordinal in the segment's
//! term dictionary (an FST walk like the one tantivy makes to find its
//! postings), then decodes at most 64 varints of its block. Version 1 stored
//! every term of the corpus in every shard; such a shard must be rebuilt.

use std::path::Path;
use std::sync::Arc;

use fanout_runtime::hashing::Fnv1a64;
use tantivy::query::Bm25StatisticsProvider;
use tantivy::schema::{Field, FieldType, Schema};
use tantivy::{InvertedIndexReader, Searcher, SegmentReader, TantivyError, Term};

use crate::LeafError;
use crate::manifest::ShardManifest;

/// File name of a shard's statistics, in every shard directory.
pub const GLOBAL_STATS_FILE_NAME: &str = "global-stats.bin";

const MAGIC: &[u8; 8] = b"FANOUTGS";
/// The statistics file's format version: an index written with another must
/// be rebuilt.
pub const STATISTICS_FORMAT_VERSION: u32 = 2;
/// Frequencies per block: a lookup decodes at most this many varints.
const BLOCK_TERMS: u64 = 64;
/// Length of tantivy's segment uuid string.
const SEGMENT_ID_LEN: usize = 32;

/// The corpus-wide BM25 statistics one shard of a build scores with, as its
/// `global-stats.bin` stores them.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardStatistics {
    generation: String,
    shard_id: u32,
    shard_count: u32,
    total_docs: u64,
    /// Ordered by field id.
    fields: Vec<FieldTotals>,
    segments: Vec<SegmentFrequencies>,
}

#[derive(Debug, Clone, PartialEq)]
struct FieldTotals {
    field_id: u32,
    field_name: String,
    total_tokens: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct SegmentFrequencies {
    segment_id: String,
    /// One per field, in the order of [`ShardStatistics::fields`].
    fields: Vec<DocFreqs>,
}

/// Corpus-wide document frequencies of the terms of one term dictionary, by
/// term ordinal.
#[derive(Debug, Clone, PartialEq, Default)]
struct DocFreqs {
    term_count: u64,
    block_starts: Vec<u32>,
    varints: Vec<u8>,
}

impl DocFreqs {
    /// Appends the frequency of the next term ordinal.
    fn push(&mut self, doc_freq: u64) -> Result<(), String> {
        if self.term_count.is_multiple_of(BLOCK_TERMS) {
            let start = u32::try_from(self.varints.len())
                .map_err(|_| "a term dictionary's frequencies exceed 4 GiB".to_string())?;
            self.block_starts.push(start);
        }
        put_varint(&mut self.varints, doc_freq);
        self.term_count += 1;
        Ok(())
    }

    /// The frequency of the term with `ordinal`; `None` past the last term.
    fn get(&self, ordinal: u64) -> Option<u64> {
        if ordinal >= self.term_count {
            return None;
        }
        let block = usize::try_from(ordinal / BLOCK_TERMS).ok()?;
        let mut position = *self.block_starts.get(block)? as usize;
        let mut value = 0;
        for _ in 0..=ordinal % BLOCK_TERMS {
            (value, position) = read_varint(&self.varints, position)?;
        }
        Some(value)
    }

    /// Checks the structure (a block start where each block begins, exactly
    /// `term_count` frequencies) and that no frequency exceeds `total_docs`
    /// (tantivy's idf would panic on one that does).
    fn check(&self, total_docs: u64) -> Result<(), String> {
        if self.block_starts.len() as u64 != self.term_count.div_ceil(BLOCK_TERMS) {
            return Err("the block count does not match the term count".into());
        }
        let mut position = 0;
        for ordinal in 0..self.term_count {
            if ordinal.is_multiple_of(BLOCK_TERMS)
                && self.block_starts[(ordinal / BLOCK_TERMS) as usize] as usize != position
            {
                return Err(format!(
                    "the block of term {ordinal} does not start where it should"
                ));
            }
            let (doc_freq, next) =
                read_varint(&self.varints, position).ok_or("a frequency is truncated")?;
            if doc_freq > total_docs {
                return Err(format!(
                    "term {ordinal} is in {doc_freq} documents but the corpus has {total_docs}"
                ));
            }
            position = next;
        }
        if position != self.varints.len() {
            return Err("bytes left after the last frequency".into());
        }
        Ok(())
    }
}

/// Terms in ascending byte order with their document frequencies: the
/// corpus's vocabulary of one field, while a build computes the statistics.
#[derive(Debug, Clone, PartialEq, Default)]
struct SortedTerms {
    bytes: Vec<u8>,
    ends: Vec<u32>,
    doc_freqs: Vec<u64>,
}

impl SortedTerms {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn term(&self, index: usize) -> &[u8] {
        let start = if index == 0 {
            0
        } else {
            self.ends[index - 1] as usize
        };
        &self.bytes[start..self.ends[index] as usize]
    }

    /// Builds from (term, doc_freq) pairs in any order; equal terms are summed.
    fn from_unsorted(mut pairs: Vec<(Vec<u8>, u64)>) -> Result<SortedTerms, String> {
        pairs.sort_unstable_by(|left, right| left.0.cmp(&right.0));
        let mut terms = SortedTerms::default();
        for (term, doc_freq) in pairs {
            if let Some(last) = terms.len().checked_sub(1)
                && terms.term(last) == term.as_slice()
            {
                terms.doc_freqs[last] += doc_freq;
                continue;
            }
            terms.bytes.extend_from_slice(&term);
            let end = u32::try_from(terms.bytes.len())
                .map_err(|_| "a field's terms exceed 4 GiB".to_string())?;
            terms.ends.push(end);
            terms.doc_freqs.push(doc_freq);
        }
        Ok(terms)
    }
}

impl ShardStatistics {
    /// Sums the statistics of every shard of one build (`searchers`, one per
    /// shard in shard id order, all with the same schema) over every indexed
    /// text field, and returns each shard's, in the same order.
    pub fn compute(
        searchers: &[Searcher],
        generation: &str,
    ) -> Result<Vec<ShardStatistics>, LeafError> {
        let Some(first) = searchers.first() else {
            return Err(LeafError::Schema(
                "no shard to compute statistics of".into(),
            ));
        };
        let shard_count = u32::try_from(searchers.len())
            .map_err(|_| LeafError::Schema("more than 2^32 shards".into()))?;
        let schema = first.schema();
        let all_segments = || searchers.iter().flat_map(Searcher::segment_readers);
        // Counts deleted documents too, like tantivy's own provider.
        let total_docs = all_segments()
            .map(|segment| u64::from(segment.max_doc()))
            .sum();
        let fields = indexed_text_fields(schema);
        let mut totals = Vec::with_capacity(fields.len());
        let mut corpus_terms = Vec::with_capacity(fields.len());
        for &field in &fields {
            let mut total_tokens = 0u64;
            let mut pairs = Vec::new();
            for segment in all_segments() {
                let inverted_index = segment.inverted_index(field)?;
                total_tokens += inverted_index.total_num_tokens();
                let mut stream = inverted_index
                    .terms()
                    .stream()
                    .map_err(|error| LeafError::Tantivy(error.into()))?;
                while stream.advance() {
                    pairs.push((stream.key().to_vec(), u64::from(stream.value().doc_freq)));
                }
            }
            totals.push(FieldTotals {
                field_id: field.field_id(),
                field_name: schema.get_field_name(field).to_string(),
                total_tokens,
            });
            corpus_terms.push(SortedTerms::from_unsorted(pairs).map_err(LeafError::Schema)?);
        }
        let mut shards = Vec::with_capacity(searchers.len());
        for (shard_id, searcher) in (0u32..).zip(searchers) {
            let mut segments = Vec::with_capacity(searcher.segment_readers().len());
            for segment in searcher.segment_readers() {
                let frequencies = fields
                    .iter()
                    .zip(&corpus_terms)
                    .map(|(&field, corpus)| frequencies_of(segment, field, corpus))
                    .collect::<Result<Vec<_>, _>>()?;
                segments.push(SegmentFrequencies {
                    segment_id: segment.segment_id().uuid_string(),
                    fields: frequencies,
                });
            }
            shards.push(ShardStatistics {
                generation: generation.to_string(),
                shard_id,
                shard_count,
                total_docs,
                fields: totals.clone(),
                segments,
            });
        }
        Ok(shards)
    }

    /// Frequencies stored: the entries of the shard's term dictionaries over
    /// all fields and segments.
    pub fn entry_count(&self) -> u64 {
        self.segments
            .iter()
            .flat_map(|segment| &segment.fields)
            .map(|frequencies| frequencies.term_count)
            .sum()
    }

    /// Encodes the statistics in the version 2 file format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let frequencies_len: usize = self
            .segments
            .iter()
            .flat_map(|segment| &segment.fields)
            .map(|frequencies| 16 + frequencies.block_starts.len() * 4 + frequencies.varints.len())
            .sum();
        let mut out = Vec::with_capacity(64 + 64 * self.fields.len() + frequencies_len);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&STATISTICS_FORMAT_VERSION.to_le_bytes());
        put_string(&mut out, &self.generation);
        out.extend_from_slice(&self.shard_id.to_le_bytes());
        out.extend_from_slice(&self.shard_count.to_le_bytes());
        out.extend_from_slice(&self.total_docs.to_le_bytes());
        // Field and segment counts are small (a schema's fields, a shard's segments).
        out.extend_from_slice(&(self.fields.len() as u32).to_le_bytes());
        for field in &self.fields {
            out.extend_from_slice(&field.field_id.to_le_bytes());
            put_string(&mut out, &field.field_name);
            out.extend_from_slice(&field.total_tokens.to_le_bytes());
        }
        out.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for segment in &self.segments {
            out.extend_from_slice(segment.segment_id.as_bytes());
            for frequencies in &segment.fields {
                out.extend_from_slice(&frequencies.term_count.to_le_bytes());
                out.extend_from_slice(&(frequencies.varints.len() as u64).to_le_bytes());
                for start in &frequencies.block_starts {
                    out.extend_from_slice(&start.to_le_bytes());
                }
                out.extend_from_slice(&frequencies.varints);
            }
        }
        let mut checksum = Fnv1a64::default();
        checksum.update(&out);
        out.extend_from_slice(&checksum.finish().to_le_bytes());
        out
    }

    /// Decodes the version 2 file format, checking its magic, version,
    /// checksum and structure.
    pub fn from_bytes(bytes: &[u8]) -> Result<ShardStatistics, String> {
        if bytes.len() < MAGIC.len() + 4 + 8 || &bytes[..MAGIC.len()] != MAGIC {
            return Err("not a fanout statistics file (bad magic)".into());
        }
        let (content, checksum_bytes) = bytes.split_at(bytes.len() - 8);
        let mut checksum = Fnv1a64::default();
        checksum.update(content);
        let stored_checksum =
            u64::from_le_bytes(checksum_bytes.try_into().map_err(|_| "truncated")?);
        let mut reader = ByteReader {
            bytes: content,
            position: MAGIC.len(),
        };
        let version = reader.u32()?;
        if version != STATISTICS_FORMAT_VERSION {
            return Err(format!(
                "format version {version} is not supported (expected {STATISTICS_FORMAT_VERSION}): \
                 rebuild the index with fanout index"
            ));
        }
        if stored_checksum != checksum.finish() {
            return Err("checksum mismatch: the file is corrupt".into());
        }
        let generation = reader.string()?;
        let shard_id = reader.u32()?;
        let shard_count = reader.u32()?;
        let total_docs = reader.u64()?;
        let field_count = reader.u32()?;
        let mut fields: Vec<FieldTotals> = Vec::new();
        for _ in 0..field_count {
            let field_id = reader.u32()?;
            if fields.last().is_some_and(|last| last.field_id >= field_id) {
                return Err("fields are not in ascending id order".into());
            }
            fields.push(FieldTotals {
                field_id,
                field_name: reader.string()?,
                total_tokens: reader.u64()?,
            });
        }
        let segment_count = reader.u32()?;
        let mut segments: Vec<SegmentFrequencies> = Vec::new();
        for _ in 0..segment_count {
            let segment_id = std::str::from_utf8(reader.take(SEGMENT_ID_LEN)?)
                .ok()
                .filter(|id| id.bytes().all(|byte| byte.is_ascii_hexdigit()))
                .ok_or("a segment id is not hexadecimal")?
                .to_string();
            if segments.iter().any(|seen| seen.segment_id == segment_id) {
                return Err(format!("segment {segment_id} is listed twice"));
            }
            let mut per_field = Vec::with_capacity(fields.len());
            for field in &fields {
                let term_count = reader.u64()?;
                let varints_len = reader.length()?;
                let block_count = usize::try_from(term_count.div_ceil(BLOCK_TERMS))
                    .map_err(|_| "a term count does not fit in memory")?;
                let block_starts = reader
                    .take(block_count.checked_mul(4).ok_or("a term count overflows")?)?
                    .chunks_exact(4)
                    .map(|chunk| u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
                    .collect();
                let frequencies = DocFreqs {
                    term_count,
                    block_starts,
                    varints: reader.take(varints_len)?.to_vec(),
                };
                frequencies.check(total_docs).map_err(|reason| {
                    format!(
                        "field {:?} of segment {segment_id}: {reason}",
                        field.field_name
                    )
                })?;
                per_field.push(frequencies);
            }
            segments.push(SegmentFrequencies {
                segment_id,
                fields: per_field,
            });
        }
        if reader.position != content.len() {
            return Err("trailing bytes after the last segment".into());
        }
        Ok(ShardStatistics {
            generation,
            shard_id,
            shard_count,
            total_docs,
            fields,
            segments,
        })
    }

    /// Writes the statistics to `path` (through a temporary file and a rename).
    pub fn write_to(&self, path: &Path) -> Result<(), LeafError> {
        let temporary = path.with_extension("bin.tmp");
        std::fs::write(&temporary, self.to_bytes())
            .map_err(|error| LeafError::io(&temporary, error))?;
        std::fs::rename(&temporary, path).map_err(|error| LeafError::io(path, error))
    }

    /// Reads statistics from `path`.
    pub fn read_from(path: &Path) -> Result<ShardStatistics, LeafError> {
        let bytes = std::fs::read(path).map_err(|error| LeafError::io(path, error))?;
        ShardStatistics::from_bytes(&bytes).map_err(|reason| LeafError::GlobalStatistics {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Loads the statistics of the shard in `shard_dir`, opened as
    /// `searcher`, ready to score with: `Ok(None)` when the shard has no
    /// statistics file; an error when the file belongs to another build
    /// (generation or shard count), another shard, another schema, or other
    /// segments.
    pub fn load_for_shard(
        shard_dir: &Path,
        manifest: &ShardManifest,
        searcher: &Searcher,
    ) -> Result<Option<ScoringStatistics>, LeafError> {
        let path = shard_dir.join(GLOBAL_STATS_FILE_NAME);
        if !path.exists() {
            return Ok(None);
        }
        let statistics = ShardStatistics::read_from(&path)?;
        if statistics.generation != manifest.generation {
            return Err(LeafError::GenerationMismatch {
                path,
                stats_generation: statistics.generation,
                shard_generation: manifest.generation.clone(),
            });
        }
        let invalid = |reason: String| LeafError::GlobalStatistics {
            path: path.clone(),
            reason,
        };
        if statistics.shard_count != manifest.shard_count {
            return Err(invalid(format!(
                "written for {} shards but the shard belongs to {}",
                statistics.shard_count, manifest.shard_count
            )));
        }
        if statistics.shard_id != manifest.shard_id {
            return Err(invalid(format!(
                "written for shard {} but this is shard {}",
                statistics.shard_id, manifest.shard_id
            )));
        }
        statistics.bind(searcher).map(Some).map_err(invalid)
    }

    /// Checks the statistics against `searcher`'s schema and segments and
    /// makes them its statistics provider.
    fn bind(self, searcher: &Searcher) -> Result<ScoringStatistics, String> {
        let schema = searcher.schema();
        let expected: Vec<(u32, &str)> = indexed_text_fields(schema)
            .into_iter()
            .map(|field| (field.field_id(), schema.get_field_name(field)))
            .collect();
        let stored: Vec<(u32, &str)> = self
            .fields
            .iter()
            .map(|field| (field.field_id, field.field_name.as_str()))
            .collect();
        if stored != expected {
            return Err(format!(
                "the statistics have the fields {stored:?} but the index scores {expected:?}"
            ));
        }
        let readers = searcher.segment_readers();
        if readers.len() != self.segments.len() {
            return Err(format!(
                "written for {} segments but the shard has {}",
                self.segments.len(),
                readers.len()
            ));
        }
        let mut fields: Vec<ScoringField> = self
            .fields
            .iter()
            .map(|field| ScoringField {
                field_id: field.field_id,
                total_tokens: field.total_tokens,
                segments: Vec::with_capacity(readers.len()),
            })
            .collect();
        let mut segments = self.segments;
        for reader in readers {
            let segment_id = reader.segment_id().uuid_string();
            let Some(position) = segments
                .iter()
                .position(|segment| segment.segment_id == segment_id)
            else {
                return Err(format!(
                    "the shard's segment {segment_id} has none: they belong to another build \
                     of this shard"
                ));
            };
            let segment = segments.swap_remove(position);
            for (scoring, frequencies) in fields.iter_mut().zip(segment.fields) {
                let field = Field::from_field_id(scoring.field_id);
                let inverted_index = reader.inverted_index(field).map_err(|error| {
                    format!(
                        "cannot open field {} of segment {segment_id}: {error}",
                        scoring.field_id
                    )
                })?;
                let term_count = inverted_index.terms().num_terms() as u64;
                if term_count != frequencies.term_count {
                    return Err(format!(
                        "segment {segment_id} holds {term_count} terms of field {} but the \
                         statistics {}",
                        scoring.field_id, frequencies.term_count
                    ));
                }
                scoring.segments.push((inverted_index, frequencies));
            }
        }
        Ok(ScoringStatistics {
            generation: self.generation,
            total_docs: self.total_docs,
            fields,
        })
    }
}

/// A shard's statistics bound to its open segments: tantivy's
/// [`Bm25StatisticsProvider`] for the shard's queries, with the corpus-wide
/// figures.
pub struct ScoringStatistics {
    generation: String,
    total_docs: u64,
    /// Ordered by field id.
    fields: Vec<ScoringField>,
}

struct ScoringField {
    field_id: u32,
    total_tokens: u64,
    /// The field's term dictionary in each segment, with the frequencies of
    /// its terms.
    segments: Vec<(Arc<InvertedIndexReader>, DocFreqs)>,
}

impl ScoringStatistics {
    /// The build these statistics belong to.
    pub fn generation(&self) -> &str {
        &self.generation
    }

    /// Documents in the whole corpus.
    pub fn total_docs(&self) -> u64 {
        self.total_docs
    }

    /// Frequencies held: the entries of the shard's term dictionaries.
    pub fn entry_count(&self) -> u64 {
        self.fields
            .iter()
            .flat_map(|field| &field.segments)
            .map(|(_, frequencies)| frequencies.term_count)
            .sum()
    }

    fn field(&self, field: Field) -> tantivy::Result<&ScoringField> {
        self.fields
            .binary_search_by_key(&field.field_id(), |scoring| scoring.field_id)
            .map(|index| &self.fields[index])
            .map_err(|_| {
                TantivyError::InvalidArgument(format!(
                    "the global statistics have no field with id {}",
                    field.field_id()
                ))
            })
    }
}

impl Bm25StatisticsProvider for ScoringStatistics {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        Ok(self.field(field)?.total_tokens)
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self.total_docs)
    }

    /// The corpus-wide frequency of a term the shard holds; 0 for one it does
    /// not (no document of the shard can match it, so its weight is unused).
    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let key = term.serialized_value_bytes();
        for (inverted_index, frequencies) in &self.field(term.field())?.segments {
            if let Some(ordinal) = inverted_index.terms().term_ord(key)? {
                return frequencies.get(ordinal).ok_or_else(|| {
                    TantivyError::InternalError(format!(
                        "term ordinal {ordinal} is past the statistics' {} terms",
                        frequencies.term_count
                    ))
                });
            }
        }
        Ok(0)
    }
}

/// The corpus-wide frequencies of `field`'s terms in `segment`, from the
/// corpus's sorted vocabulary (which holds every term of every segment).
fn frequencies_of(
    segment: &SegmentReader,
    field: Field,
    corpus: &SortedTerms,
) -> Result<DocFreqs, LeafError> {
    let inverted_index = segment.inverted_index(field)?;
    let mut stream = inverted_index
        .terms()
        .stream()
        .map_err(|error| LeafError::Tantivy(error.into()))?;
    let mut frequencies = DocFreqs::default();
    let mut next = 0;
    while stream.advance() {
        let key = stream.key();
        // Both ascend: walk the corpus's terms forward to this one.
        while next < corpus.len() && corpus.term(next) < key {
            next += 1;
        }
        if next == corpus.len() || corpus.term(next) != key {
            return Err(LeafError::Schema(format!(
                "a term of field {} is missing from the corpus's statistics",
                field.field_id()
            )));
        }
        frequencies
            .push(corpus.doc_freqs[next])
            .map_err(LeafError::Schema)?;
    }
    Ok(frequencies)
}

/// Fields whose terms BM25 may score: indexed string and text fields.
fn indexed_text_fields(schema: &Schema) -> Vec<Field> {
    schema
        .fields()
        .filter(|(_, entry)| entry.is_indexed() && matches!(entry.field_type(), FieldType::Str(_)))
        .map(|(field, _)| field)
        .collect()
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The LEB128 value at `position` and the position after it; `None` when it
/// is truncated or longer than a u64.
fn read_varint(bytes: &[u8], mut position: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(position)?;
        position += 1;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some((value, position));
        }
    }
    None
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    // Generations and field names are short.
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

struct ByteReader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> ByteReader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], String> {
        let end = self
            .position
            .checked_add(length)
            .filter(|&end| end <= self.bytes.len())
            .ok_or("the file is truncated")?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(word))
    }

    fn length(&mut self) -> Result<usize, String> {
        usize::try_from(self.u64()?).map_err(|_| "a length does not fit in memory".to_string())
    }

    fn string(&mut self) -> Result<String, String> {
        let length = self.u32()? as usize;
        let bytes = self.take(length)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{SearchFields, index_in_ram};
    use tantivy::Index;

    /// Shard 0: one segment; shard 1: two segments ("pasta" only in the second).
    fn two_shards() -> Vec<Index> {
        vec![
            index_in_ram(&[&[("a", "rust search", "fast search engines in rust")]]),
            index_in_ram(&[
                &[("b", "rust", "the rust language")],
                &[("c", "cooking", "pasta and search for sauce")],
            ]),
        ]
    }

    fn searchers(indexes: &[Index]) -> Vec<Searcher> {
        indexes
            .iter()
            .map(|index| index.reader().unwrap().searcher())
            .collect()
    }

    fn scoring(indexes: &[Index]) -> Vec<ScoringStatistics> {
        let searchers = searchers(indexes);
        ShardStatistics::compute(&searchers, "g1")
            .unwrap()
            .into_iter()
            .zip(&searchers)
            .map(|(statistics, searcher)| statistics.bind(searcher).unwrap())
            .collect()
    }

    fn manifest(shard_id: u32) -> ShardManifest {
        ShardManifest {
            shard_id,
            shard_count: 2,
            generation: "g1".into(),
            doc_count: 1,
        }
    }

    #[test]
    fn every_shard_scores_its_own_terms_with_the_corpus_wide_figures() {
        let indexes = two_shards();
        let shards = scoring(&indexes);
        assert_eq!(indexes[1].searchable_segment_ids().unwrap().len(), 2);
        let fields = SearchFields::from_schema(&indexes[0].schema()).unwrap();
        for statistics in &shards {
            assert_eq!(statistics.total_num_docs().unwrap(), 3);
            // text: 5 + 3 + 5 tokens ("the" and "and" are indexed).
            assert_eq!(statistics.total_num_tokens(fields.text).unwrap(), 13);
            assert_eq!(statistics.total_num_tokens(fields.title).unwrap(), 4);
        }
        let doc_freq = |shard: usize, field, text| {
            shards[shard]
                .doc_freq(&Term::from_field_text(field, text))
                .unwrap()
        };
        for shard in 0..2 {
            assert_eq!(doc_freq(shard, fields.title, "rust"), 2);
            assert_eq!(doc_freq(shard, fields.text, "search"), 2, "shard {shard}");
        }
        assert_eq!(
            doc_freq(0, fields.text, "engin"),
            1,
            "terms are stored stemmed"
        );
        assert_eq!(
            doc_freq(1, fields.text, "pasta"),
            1,
            "found in the second segment"
        );
        assert_eq!(doc_freq(1, fields.id, "b"), 1);
        // Terms a shard does not hold have no entry: 0, whatever the corpus has.
        assert_eq!(doc_freq(0, fields.text, "pasta"), 0);
        assert_eq!(doc_freq(1, fields.text, "engin"), 0);
        assert_eq!(doc_freq(0, fields.text, "missing"), 0);
        // One entry per term of each shard's own dictionaries, none for the others'.
        for (statistics, searcher) in shards.iter().zip(searchers(&indexes)) {
            let own: u64 = indexed_text_fields(&indexes[0].schema())
                .into_iter()
                .flat_map(|field| {
                    searcher.segment_readers().iter().map(move |segment| {
                        segment.inverted_index(field).unwrap().terms().num_terms() as u64
                    })
                })
                .sum();
            assert_eq!(statistics.entry_count(), own);
        }
    }

    #[test]
    fn scores_equal_those_of_one_index_over_the_whole_corpus() {
        use tantivy::collector::TopDocs;
        use tantivy::query::TermQuery;
        use tantivy::schema::IndexRecordOption;
        let indexes = two_shards();
        let whole = index_in_ram(&[&[
            ("a", "rust search", "fast search engines in rust"),
            ("b", "rust", "the rust language"),
            ("c", "cooking", "pasta and search for sauce"),
        ]]);
        let fields = SearchFields::from_schema(&whole.schema()).unwrap();
        let query = TermQuery::new(
            Term::from_field_text(fields.text, "search"),
            IndexRecordOption::WithFreqs,
        );
        let scores = |hits: Vec<(f32, tantivy::DocAddress)>| -> Vec<f32> {
            hits.into_iter().map(|(score, _)| score).collect()
        };
        let collector = TopDocs::with_limit(10).order_by_score();
        let mut expected = scores(
            whole
                .reader()
                .unwrap()
                .searcher()
                .search(&query, &collector)
                .unwrap(),
        );
        let mut sharded = Vec::new();
        for (statistics, searcher) in scoring(&indexes).iter().zip(searchers(&indexes)) {
            sharded.extend(scores(
                searcher
                    .search_with_statistics_provider(&query, &collector, statistics)
                    .unwrap(),
            ));
        }
        expected.sort_by(f32::total_cmp);
        sharded.sort_by(f32::total_cmp);
        assert_eq!(expected.len(), 2);
        assert_eq!(sharded, expected, "bit-identical");
    }

    #[test]
    fn round_trips_through_the_file_format() {
        let indexes = two_shards();
        for statistics in ShardStatistics::compute(&searchers(&indexes), "g1").unwrap() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(GLOBAL_STATS_FILE_NAME);
            statistics.write_to(&path).unwrap();
            let read = ShardStatistics::read_from(&path).unwrap();
            assert_eq!(read, statistics);
            assert!(read.entry_count() > 5);
        }
    }

    #[test]
    fn refuses_corrupt_old_or_foreign_files() {
        let indexes = two_shards();
        let statistics = ShardStatistics::compute(&searchers(&indexes), "g1").unwrap();
        let bytes = statistics[0].to_bytes();
        let mut flipped = bytes.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x40;
        assert!(
            ShardStatistics::from_bytes(&flipped)
                .unwrap_err()
                .contains("checksum")
        );
        assert!(ShardStatistics::from_bytes(&bytes[..bytes.len() - 9]).is_err());
        assert!(
            ShardStatistics::from_bytes(b"{\"json\": true}")
                .unwrap_err()
                .contains("magic")
        );
        let mut version_one = bytes.clone();
        version_one[8..12].copy_from_slice(&1u32.to_le_bytes());
        let error = ShardStatistics::from_bytes(&version_one).unwrap_err();
        assert!(
            error.contains("version 1") && error.contains("rebuild"),
            "{error}"
        );

        // Well formed and checksummed but impossible: a frequency above the corpus's
        // document count (tantivy's idf would panic on it).
        let mut impossible = statistics[0].clone();
        impossible.total_docs = 0;
        let error = ShardStatistics::from_bytes(&impossible.to_bytes()).unwrap_err();
        assert!(error.contains("but the corpus has 0"), "{error}");

        // Shard 1's statistics are not shard 0's, even in the same build.
        let searchers = searchers(&indexes);
        let error = statistics[1].clone().bind(&searchers[0]).err().unwrap();
        assert!(error.contains("2 segments but the shard has 1"), "{error}");
        let error = statistics[0].clone().bind(&searchers[1]).err().unwrap();
        assert!(error.contains("1 segments but the shard has 2"), "{error}");
        // The same documents indexed again are other segments.
        let again = index_in_ram(&[&[("a", "rust search", "fast search engines in rust")]]);
        let error = statistics[0]
            .clone()
            .bind(&again.reader().unwrap().searcher())
            .err()
            .unwrap();
        assert!(error.contains("another build"), "{error}");
    }

    #[test]
    fn refuses_statistics_of_another_generation_or_shard() {
        let indexes = two_shards();
        let searchers = searchers(&indexes);
        let statistics = ShardStatistics::compute(&searchers, "g1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        statistics[0]
            .write_to(&dir.path().join(GLOBAL_STATS_FILE_NAME))
            .unwrap();
        let loaded =
            ShardStatistics::load_for_shard(dir.path(), &manifest(0), &searchers[0]).unwrap();
        assert_eq!(
            loaded.as_ref().map(ScoringStatistics::generation),
            Some("g1")
        );

        let mut other = manifest(0);
        other.generation = "g2".into();
        let error = ShardStatistics::load_for_shard(dir.path(), &other, &searchers[0])
            .err()
            .unwrap();
        assert!(
            matches!(error, LeafError::GenerationMismatch { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("\"g1\""), "{error}");

        let error = ShardStatistics::load_for_shard(dir.path(), &manifest(1), &searchers[1])
            .err()
            .unwrap();
        assert!(
            error
                .to_string()
                .contains("written for shard 0 but this is shard 1"),
            "{error}"
        );

        let empty = tempfile::tempdir().unwrap();
        assert!(
            ShardStatistics::load_for_shard(empty.path(), &other, &searchers[0])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn frequencies_are_found_by_ordinal_across_blocks() {
        let values: Vec<u64> = (0..300u64)
            .map(|ordinal| match ordinal % 7 {
                0 => ordinal * 1_000_003,
                1 => u64::MAX - ordinal,
                _ => ordinal % 100,
            })
            .collect();
        let mut frequencies = DocFreqs::default();
        for &value in &values {
            frequencies.push(value).unwrap();
        }
        assert_eq!(frequencies.block_starts.len(), 5);
        for (ordinal, &value) in (0u64..).zip(&values) {
            assert_eq!(frequencies.get(ordinal), Some(value), "ordinal {ordinal}");
        }
        assert_eq!(frequencies.get(300), None);
        frequencies.check(u64::MAX).unwrap();
        let mut moved = frequencies.clone();
        moved.block_starts[2] += 1;
        assert!(
            moved
                .check(u64::MAX)
                .unwrap_err()
                .contains("block of term 128")
        );
        let mut truncated = frequencies.clone();
        truncated.varints.pop();
        assert!(truncated.check(u64::MAX).is_err());
        assert_eq!(read_varint(&[0xff; 11], 0), None, "longer than a u64");
    }

    #[test]
    fn sorted_terms_sum_duplicates_in_byte_order() {
        let terms = SortedTerms::from_unsorted(vec![
            (b"pear".to_vec(), 2),
            (b"apple".to_vec(), 1),
            (b"pear".to_vec(), 3),
            (b"".to_vec(), 7),
        ])
        .unwrap();
        let listed: Vec<(&[u8], u64)> = (0..terms.len())
            .map(|index| (terms.term(index), terms.doc_freqs[index]))
            .collect();
        assert_eq!(
            listed,
            vec![(&b""[..], 7), (&b"apple"[..], 1), (&b"pear"[..], 5)]
        );
    }
}
