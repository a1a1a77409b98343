//! The schema every fanout shard shares, and its English analyzer.
//!
//! | field   | type                           | options                        |
//! |---------|--------------------------------|--------------------------------|
//! | `id`    | raw string (one token)         | indexed, STORED, FAST          |
//! | `title` | text, analyzer [`ENGLISH_ANALYZER`] | freqs + positions, STORED |
//! | `text`  | text, analyzer [`ENGLISH_ANALYZER`] | freqs + positions, STORED |
//!
//! ## The analyzer
//!
//! Title and text go through one English analyzer, registered as `en_stem`:
//! tantivy's `SimpleTokenizer` (splits on every character that is not
//! alphanumeric, so punctuation, hyphens and colons separate words), tokens
//! longer than 40 bytes dropped, lowercasing, then the Snowball English
//! (Porter 2) stemmer. This is the same pipeline as tantivy's built-in
//! `en_stem`; it is registered explicitly so that the analyzer an index was
//! built with is spelled out here and cannot drift with tantivy's defaults.
//!
//! Stop words are kept in the index (so phrase queries and document lengths
//! see every word) and dropped from natural-language queries only (see
//! [`QUERY_STOP_WORDS`] and `query.rs`). With the 33-word Lucene list this
//! matches the Anserini BM25 recipe closely enough to reach its published
//! relevance on BEIR SciFact.

use tantivy::Index;
use tantivy::schema::{
    FAST, Field, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, TextAnalyzer,
};

use crate::LeafError;

/// The document identifier field: one raw token, stored and fast.
pub const ID_FIELD: &str = "id";
/// The title field, analyzed in English.
pub const TITLE_FIELD: &str = "title";
/// The body text field, analyzed in English.
pub const TEXT_FIELD: &str = "text";

/// Name under which the English analyzer is registered.
pub const ENGLISH_ANALYZER: &str = "en_stem";

/// Tokens longer than this many bytes are dropped (tantivy's default too).
const MAX_TOKEN_BYTES: usize = 40;

/// English stop words dropped from natural-language queries: the 33-word
/// list of Lucene's `EnglishAnalyzer`, which Anserini's BM25 baselines use.
/// Compared with the lowercased token before stemming.
pub const QUERY_STOP_WORDS: [&str; 33] = [
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with",
];

/// The schema of every shard.
pub fn build_schema() -> Schema {
    let mut builder = Schema::builder();
    builder.add_text_field(ID_FIELD, STRING | STORED | FAST);
    let english_indexing = TextFieldIndexing::default()
        .set_tokenizer(ENGLISH_ANALYZER)
        .set_index_option(IndexRecordOption::WithFreqsAndPositions);
    let english_text = TextOptions::default()
        .set_indexing_options(english_indexing)
        .set_stored();
    builder.add_text_field(TITLE_FIELD, english_text.clone());
    builder.add_text_field(TEXT_FIELD, english_text);
    builder.build()
}

/// The three fields of the fanout schema, resolved in one index's schema.
#[derive(Debug, Clone, Copy)]
pub struct SearchFields {
    pub id: Field,
    pub title: Field,
    pub text: Field,
}

impl SearchFields {
    /// Resolves the fields, failing when the index was not built by fanout.
    pub fn from_schema(schema: &Schema) -> Result<SearchFields, LeafError> {
        let field = |name: &str| {
            schema
                .get_field(name)
                .map_err(|_| LeafError::Schema(format!("missing field {name:?}")))
        };
        Ok(SearchFields {
            id: field(ID_FIELD)?,
            title: field(TITLE_FIELD)?,
            text: field(TEXT_FIELD)?,
        })
    }

    /// The stored field called `name`, if the schema has one.
    pub fn stored_field(&self, name: &str) -> Option<Field> {
        match name {
            ID_FIELD => Some(self.id),
            TITLE_FIELD => Some(self.title),
            TEXT_FIELD => Some(self.text),
            _ => None,
        }
    }
}

/// The English analyzer title and text are indexed with (see the module docs).
pub fn english_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
        .filter(LowerCaser)
        .filter(Stemmer::new(Language::English))
        .build()
}

/// The English analyzer without its stemmer: the tokens a query's stop words
/// are recognised in. Splits exactly like [`english_analyzer`].
pub(crate) fn unstemmed_english_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
        .filter(LowerCaser)
        .build()
}

/// Registers fanout's analyzers on `index`. Every index must go through this
/// right after it is created or opened, before it is written or searched.
pub fn register_tokenizers(index: &Index) {
    index
        .tokenizers()
        .register(ENGLISH_ANALYZER, english_analyzer());
}

/// An in-RAM index with the fanout schema, for unit tests: each slice of
/// `(id, title, text)` documents is one commit, so one segment (merges are
/// off). An empty title or text is left out, as `fanout index` does.
#[cfg(test)]
pub(crate) fn index_in_ram(commits: &[&[(&str, &str, &str)]]) -> Index {
    let index = Index::create_in_ram(build_schema());
    register_tokenizers(&index);
    let fields = SearchFields::from_schema(&index.schema()).unwrap();
    let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
    writer.set_merge_policy(Box::new(tantivy::indexer::NoMergePolicy));
    for documents in commits {
        for &(id, title, text) in *documents {
            let mut document = tantivy::TantivyDocument::default();
            document.add_text(fields.id, id);
            for (field, value) in [(fields.title, title), (fields.text, text)] {
                if !value.is_empty() {
                    document.add_text(field, value);
                }
            }
            writer.add_document(document).unwrap();
        }
        writer.commit().unwrap();
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(mut analyzer: TextAnalyzer, text: &str) -> Vec<String> {
        let mut stream = analyzer.token_stream(text);
        let mut tokens = Vec::new();
        while let Some(token) = stream.next() {
            tokens.push(token.text.clone());
        }
        tokens
    }

    #[test]
    fn english_analyzer_splits_on_punctuation_lowercases_and_stems() {
        assert_eq!(
            tokens(english_analyzer(), "Running-shoes: (Cats') RUNS"),
            ["run", "shoe", "cat", "run"]
        );
        assert_eq!(
            tokens(unstemmed_english_analyzer(), "Running-shoes: (Cats') RUNS"),
            ["running", "shoes", "cats", "runs"]
        );
    }

    #[test]
    fn schema_has_the_three_fields_with_their_options() {
        let schema = build_schema();
        let fields = SearchFields::from_schema(&schema).unwrap();
        let id = schema.get_field_entry(fields.id);
        assert!(id.is_indexed() && id.is_stored() && id.is_fast());
        for field in [fields.title, fields.text] {
            let entry = schema.get_field_entry(field);
            assert!(entry.is_stored());
            let indexing = match entry.field_type() {
                tantivy::schema::FieldType::Str(options) => options.get_indexing_options(),
                other => panic!("unexpected field type {other:?}"),
            };
            // `indexing` is Some for an indexed text field.
            let indexing = indexing.expect("title and text are indexed");
            assert_eq!(indexing.tokenizer(), ENGLISH_ANALYZER);
            assert_eq!(
                indexing.index_option(),
                IndexRecordOption::WithFreqsAndPositions
            );
        }
        assert!(fields.stored_field("title").is_some());
        assert!(fields.stored_field("body").is_none());
    }

    #[test]
    fn the_stop_list_has_the_33_lucene_words() {
        let unique: std::collections::BTreeSet<_> = QUERY_STOP_WORDS.iter().collect();
        assert_eq!(unique.len(), 33);
        assert!(QUERY_STOP_WORDS.contains(&"the") && QUERY_STOP_WORDS.contains(&"with"));
    }
}
