//! Exact global BM25: corpus-wide statistics every shard scores with.
//!
//! BM25 needs, per query term, the number of documents holding it, and per
//! field, the number of documents and of tokens. A shard knows only its own,
//! so per-shard scores are not comparable. After a build has written every
//! shard, [`GlobalStatistics::compute`] sums these numbers over all shards
//! (for every term of every indexed text field) and the build writes the result
//! into each shard as `global-stats.bin`. A leaf loads it when it opens and
//! hands it to tantivy as its [`Bm25StatisticsProvider`]: every shard then
//! scores exactly as one index over the whole corpus would, with no extra
//! round trip per query.
//!
//! The statistics belong to one build: the file carries the build's
//! generation and a leaf refuses a file whose generation differs from its
//! shard's.
//!
//! ## File format (version 1, integers little-endian)
//!
//! ```text
//! magic  "FANOUTGS" (8 bytes)     version u32 = 1
//! generation: len u32, UTF-8 bytes
//! shard_count u32                 total_docs u64
//! field_count u32, then per field (in field id order):
//!   field_id u32   name: len u32, UTF-8 bytes   total_tokens u64
//!   term_count u64   term_bytes_len u64
//!   term_bytes  (every term's bytes, concatenated, terms in ascending byte order)
//!   term_ends   (term_count x u32: end offset of each term in term_bytes)
//!   doc_freqs   (term_count x u64)
//! checksum u64: FNV-1a 64 (fanout_runtime::hashing) of every byte before it
//! ```
//!
//! In memory a field's terms stay in that layout (one byte buffer, one offset
//! array, one frequency array) and are looked up by binary search: a few
//! bytes per term instead of a hash map entry and an allocation per term.

use std::path::Path;

use fanout_runtime::hashing::Fnv1a64;
use tantivy::query::Bm25StatisticsProvider;
use tantivy::schema::{Field, FieldType, Schema};
use tantivy::{Searcher, TantivyError, Term};

use crate::LeafError;
use crate::manifest::ShardManifest;

/// File name of the global statistics, in every shard directory.
pub const GLOBAL_STATS_FILE_NAME: &str = "global-stats.bin";

const MAGIC: &[u8; 8] = b"FANOUTGS";
const FORMAT_VERSION: u32 = 1;

/// Corpus-wide BM25 statistics of one build, for every shard of it.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalStatistics {
    generation: String,
    shard_count: u32,
    total_docs: u64,
    /// Ordered by field id.
    fields: Vec<FieldStatistics>,
}

#[derive(Debug, Clone, PartialEq)]
struct FieldStatistics {
    field_id: u32,
    field_name: String,
    total_tokens: u64,
    terms: SortedTerms,
}

/// Terms in ascending byte order with their document frequencies.
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

    fn doc_freq(&self, key: &[u8]) -> u64 {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = low + (high - low) / 2;
            match self.term(middle).cmp(key) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return self.doc_freqs[middle],
            }
        }
        0
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

impl GlobalStatistics {
    /// Sums the statistics of every shard of one build (`searchers`, one per
    /// shard, all with the same schema) over every indexed text field.
    pub fn compute(
        searchers: &[Searcher],
        generation: &str,
        shard_count: u32,
    ) -> Result<GlobalStatistics, LeafError> {
        let Some(first) = searchers.first() else {
            return Err(LeafError::Schema(
                "no shard to compute statistics of".into(),
            ));
        };
        let schema = first.schema();
        let mut total_docs = 0u64;
        for searcher in searchers {
            for segment in searcher.segment_readers() {
                // Counts deleted documents too, like tantivy's own provider.
                total_docs += u64::from(segment.max_doc());
            }
        }
        let mut fields = Vec::new();
        for field in indexed_text_fields(schema) {
            let mut total_tokens = 0u64;
            let mut pairs = Vec::new();
            for searcher in searchers {
                for segment in searcher.segment_readers() {
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
            }
            let terms = SortedTerms::from_unsorted(pairs).map_err(LeafError::Schema)?;
            fields.push(FieldStatistics {
                field_id: field.field_id(),
                field_name: schema.get_field_name(field).to_string(),
                total_tokens,
                terms,
            });
        }
        Ok(GlobalStatistics {
            generation: generation.to_string(),
            shard_count,
            total_docs,
            fields,
        })
    }

    /// The build these statistics belong to.
    pub fn generation(&self) -> &str {
        &self.generation
    }

    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// Documents in the whole corpus.
    pub fn total_docs(&self) -> u64 {
        self.total_docs
    }

    /// Distinct terms over all fields.
    pub fn term_count(&self) -> usize {
        self.fields.iter().map(|field| field.terms.len()).sum()
    }

    fn field(&self, field: Field) -> Option<&FieldStatistics> {
        self.fields
            .binary_search_by_key(&field.field_id(), |statistics| statistics.field_id)
            .ok()
            .map(|index| &self.fields[index])
    }

    /// Encodes the statistics in the version 1 file format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(64 + self.fields.iter().map(encoded_field_len).sum::<usize>());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        put_string(&mut out, &self.generation);
        out.extend_from_slice(&self.shard_count.to_le_bytes());
        out.extend_from_slice(&self.total_docs.to_le_bytes());
        // Field counts are tiny (a schema's fields).
        out.extend_from_slice(&(self.fields.len() as u32).to_le_bytes());
        for field in &self.fields {
            out.extend_from_slice(&field.field_id.to_le_bytes());
            put_string(&mut out, &field.field_name);
            out.extend_from_slice(&field.total_tokens.to_le_bytes());
            out.extend_from_slice(&(field.terms.len() as u64).to_le_bytes());
            out.extend_from_slice(&(field.terms.bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(&field.terms.bytes);
            for end in &field.terms.ends {
                out.extend_from_slice(&end.to_le_bytes());
            }
            for doc_freq in &field.terms.doc_freqs {
                out.extend_from_slice(&doc_freq.to_le_bytes());
            }
        }
        let mut checksum = Fnv1a64::default();
        checksum.update(&out);
        out.extend_from_slice(&checksum.finish().to_le_bytes());
        out
    }

    /// Decodes the version 1 file format, checking its magic, version,
    /// checksum and structure.
    pub fn from_bytes(bytes: &[u8]) -> Result<GlobalStatistics, String> {
        if bytes.len() < MAGIC.len() + 4 + 8 || &bytes[..MAGIC.len()] != MAGIC {
            return Err("not a fanout global statistics file (bad magic)".into());
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
        if version != FORMAT_VERSION {
            return Err(format!(
                "format version {version} is not supported (expected {FORMAT_VERSION})"
            ));
        }
        if stored_checksum != checksum.finish() {
            return Err("checksum mismatch: the file is corrupt".into());
        }
        let generation = reader.string()?;
        let shard_count = reader.u32()?;
        let total_docs = reader.u64()?;
        let field_count = reader.u32()?;
        let mut fields: Vec<FieldStatistics> = Vec::new();
        for _ in 0..field_count {
            let field_id = reader.u32()?;
            if fields.last().is_some_and(|last| last.field_id >= field_id) {
                return Err("fields are not in ascending id order".into());
            }
            let field_name = reader.string()?;
            let total_tokens = reader.u64()?;
            let term_count = reader.length()?;
            let term_bytes_len = reader.length()?;
            let term_bytes = reader.take(term_bytes_len)?.to_vec();
            let ends_bytes =
                reader.take(term_count.checked_mul(4).ok_or("term count overflows")?)?;
            let ends: Vec<u32> = ends_bytes
                .chunks_exact(4)
                .map(|chunk| u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
                .collect();
            let doc_freq_bytes =
                reader.take(term_count.checked_mul(8).ok_or("term count overflows")?)?;
            let doc_freqs: Vec<u64> = doc_freq_bytes
                .chunks_exact(8)
                .map(|chunk| {
                    let mut word = [0u8; 8];
                    word.copy_from_slice(chunk);
                    u64::from_le_bytes(word)
                })
                .collect();
            let terms = SortedTerms {
                bytes: term_bytes,
                ends,
                doc_freqs,
            };
            check_sorted_terms(&terms, &field_name)?;
            fields.push(FieldStatistics {
                field_id,
                field_name,
                total_tokens,
                terms,
            });
        }
        if reader.position != content.len() {
            return Err("trailing bytes after the last field".into());
        }
        Ok(GlobalStatistics {
            generation,
            shard_count,
            total_docs,
            fields,
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
    pub fn read_from(path: &Path) -> Result<GlobalStatistics, LeafError> {
        let bytes = std::fs::read(path).map_err(|error| LeafError::io(path, error))?;
        GlobalStatistics::from_bytes(&bytes).map_err(|reason| LeafError::GlobalStatistics {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Loads the statistics of the shard in `shard_dir`: `Ok(None)` when the
    /// shard has no statistics file; an error when the file belongs to another
    /// build (generation or shard count) or to another schema.
    pub fn load_for_shard(
        shard_dir: &Path,
        manifest: &ShardManifest,
        schema: &Schema,
    ) -> Result<Option<GlobalStatistics>, LeafError> {
        let path = shard_dir.join(GLOBAL_STATS_FILE_NAME);
        if !path.exists() {
            return Ok(None);
        }
        let statistics = GlobalStatistics::read_from(&path)?;
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
        for field_statistics in &statistics.fields {
            let field = Field::from_field_id(field_statistics.field_id);
            let schema_name = schema
                .fields()
                .find(|(candidate, _)| *candidate == field)
                .map(|(_, entry)| entry.name());
            if schema_name != Some(field_statistics.field_name.as_str()) {
                return Err(invalid(format!(
                    "field {} is {:?} in the statistics but {:?} in the index",
                    field_statistics.field_id, field_statistics.field_name, schema_name
                )));
            }
        }
        Ok(Some(statistics))
    }
}

impl Bm25StatisticsProvider for GlobalStatistics {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        self.field(field)
            .map(|statistics| statistics.total_tokens)
            .ok_or_else(|| missing_field(field))
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self.total_docs)
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        self.field(term.field())
            .map(|statistics| statistics.terms.doc_freq(term.serialized_value_bytes()))
            .ok_or_else(|| missing_field(term.field()))
    }
}

fn missing_field(field: Field) -> TantivyError {
    TantivyError::InvalidArgument(format!(
        "the global statistics have no field with id {}",
        field.field_id()
    ))
}

/// Fields whose terms BM25 may score: indexed string and text fields.
fn indexed_text_fields(schema: &Schema) -> Vec<Field> {
    schema
        .fields()
        .filter(|(_, entry)| entry.is_indexed() && matches!(entry.field_type(), FieldType::Str(_)))
        .map(|(field, _)| field)
        .collect()
}

fn encoded_field_len(field: &FieldStatistics) -> usize {
    40 + field.field_name.len() + field.terms.bytes.len() + field.terms.len() * 12
}

fn check_sorted_terms(terms: &SortedTerms, field_name: &str) -> Result<(), String> {
    let mut previous_end = 0u32;
    for &end in &terms.ends {
        if end < previous_end || end as usize > terms.bytes.len() {
            return Err(format!(
                "term offsets of field {field_name:?} are out of order"
            ));
        }
        previous_end = end;
    }
    if terms.ends.last().map_or(0, |&end| end as usize) != terms.bytes.len() {
        return Err(format!(
            "term bytes of field {field_name:?} do not match their offsets"
        ));
    }
    for index in 1..terms.len() {
        if terms.term(index - 1) >= terms.term(index) {
            return Err(format!(
                "terms of field {field_name:?} are not strictly ascending"
            ));
        }
    }
    Ok(())
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
    use crate::schema::{SearchFields, build_schema, register_tokenizers};
    use tantivy::{Index, IndexWriter, TantivyDocument};

    /// Two small shards as in-RAM indexes, with the fanout schema.
    fn two_shards() -> Vec<Index> {
        let texts = [
            vec![("a", "rust search", "fast search engines in rust")],
            vec![
                ("b", "rust", "the rust language"),
                ("c", "cooking", "pasta and search for sauce"),
            ],
        ];
        texts
            .iter()
            .map(|docs| {
                let index = Index::create_in_ram(build_schema());
                register_tokenizers(&index);
                let fields = SearchFields::from_schema(&index.schema()).unwrap();
                let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
                for (id, title, text) in docs {
                    let mut document = TantivyDocument::default();
                    document.add_text(fields.id, id);
                    document.add_text(fields.title, title);
                    document.add_text(fields.text, text);
                    writer.add_document(document).unwrap();
                }
                writer.commit().unwrap();
                index
            })
            .collect()
    }

    fn searchers(indexes: &[Index]) -> Vec<Searcher> {
        indexes
            .iter()
            .map(|index| index.reader().unwrap().searcher())
            .collect()
    }

    #[test]
    fn sums_statistics_over_shards() {
        let indexes = two_shards();
        let statistics = GlobalStatistics::compute(&searchers(&indexes), "g1", 2).unwrap();
        let fields = SearchFields::from_schema(&indexes[0].schema()).unwrap();
        assert_eq!(statistics.total_docs(), 3);
        assert_eq!(statistics.total_num_docs().unwrap(), 3);
        // text: 5 + 3 + 5 tokens ("the" and "and" are indexed).
        assert_eq!(statistics.total_num_tokens(fields.text).unwrap(), 13);
        assert_eq!(statistics.total_num_tokens(fields.title).unwrap(), 4);
        let doc_freq = |field, text| {
            statistics
                .doc_freq(&Term::from_field_text(field, text))
                .unwrap()
        };
        assert_eq!(doc_freq(fields.title, "rust"), 2);
        assert_eq!(doc_freq(fields.text, "search"), 2);
        assert_eq!(
            doc_freq(fields.text, "engin"),
            1,
            "terms are stored stemmed"
        );
        assert_eq!(doc_freq(fields.text, "missing"), 0);
        assert_eq!(doc_freq(fields.id, "b"), 1);
    }

    #[test]
    fn round_trips_through_the_file_format() {
        let indexes = two_shards();
        let statistics = GlobalStatistics::compute(&searchers(&indexes), "g1", 2).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(GLOBAL_STATS_FILE_NAME);
        statistics.write_to(&path).unwrap();
        let read = GlobalStatistics::read_from(&path).unwrap();
        assert_eq!(read, statistics);
        assert!(read.term_count() > 10);
    }

    #[test]
    fn refuses_corrupt_or_foreign_files() {
        let indexes = two_shards();
        let bytes = GlobalStatistics::compute(&searchers(&indexes), "g1", 2)
            .unwrap()
            .to_bytes();
        let mut flipped = bytes.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x40;
        assert!(
            GlobalStatistics::from_bytes(&flipped)
                .unwrap_err()
                .contains("checksum")
        );
        assert!(GlobalStatistics::from_bytes(&bytes[..bytes.len() - 9]).is_err());
        assert!(
            GlobalStatistics::from_bytes(b"{\"json\": true}")
                .unwrap_err()
                .contains("magic")
        );
    }

    #[test]
    fn refuses_statistics_of_another_generation() {
        let indexes = two_shards();
        let statistics = GlobalStatistics::compute(&searchers(&indexes), "g1", 2).unwrap();
        let dir = tempfile::tempdir().unwrap();
        statistics
            .write_to(&dir.path().join(GLOBAL_STATS_FILE_NAME))
            .unwrap();
        let schema = indexes[0].schema();
        let mut manifest = ShardManifest {
            shard_id: 0,
            shard_count: 2,
            generation: "g1".into(),
            doc_count: 1,
        };
        let loaded = GlobalStatistics::load_for_shard(dir.path(), &manifest, &schema).unwrap();
        assert_eq!(
            loaded.as_ref().map(GlobalStatistics::generation),
            Some("g1")
        );

        manifest.generation = "g2".into();
        let error = GlobalStatistics::load_for_shard(dir.path(), &manifest, &schema).unwrap_err();
        assert!(
            matches!(error, LeafError::GenerationMismatch { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("\"g1\""), "{error}");

        let empty = tempfile::tempdir().unwrap();
        assert!(
            GlobalStatistics::load_for_shard(empty.path(), &manifest, &schema)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn sorted_terms_sum_duplicates_and_find_by_binary_search() {
        let terms = SortedTerms::from_unsorted(vec![
            (b"pear".to_vec(), 2),
            (b"apple".to_vec(), 1),
            (b"pear".to_vec(), 3),
            (b"".to_vec(), 7),
        ])
        .unwrap();
        assert_eq!(terms.len(), 3);
        assert_eq!(terms.doc_freq(b"pear"), 5);
        assert_eq!(terms.doc_freq(b"apple"), 1);
        assert_eq!(terms.doc_freq(b""), 7);
        assert_eq!(terms.doc_freq(b"banana"), 0);
        assert_eq!(terms.doc_freq(b"zzz"), 0);
    }
}
