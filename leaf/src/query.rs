//! Turning a query string into a tantivy query.
//!
//! - [`QueryMode::Natural`] (free text as people type it): the text goes
//!   through the index's own English analyzer, so words match the documents'
//!   tokens; punctuation, hyphens, colons, parentheses, quotes, `+` and `-`
//!   only separate words and are never syntax. The 33 English stop words of
//!   [`QUERY_STOP_WORDS`] are dropped (recognised on the lowercased word
//!   before stemming). Each remaining term scores "best fields": a
//!   `DisjunctionMaxQuery` over the term in `title` and in `text`, the better
//!   field plus half the other (tie breaker 0.5). The terms are SHOULD clauses
//!   of one `BooleanQuery`; a term typed twice counts twice (a boost of 2).
//! - [`QueryMode::Syntax`]: tantivy's query language over `title` and `text`
//!   (`title:rust AND "exact phrase" -excluded`), OR between clauses by default.
//!
//! Every query is first measured against the [`QueryLimits`] (bytes, nesting
//! depth, clauses: [`check_query`]), so tantivy's recursive parser never sees
//! a query deeper than the limit; building is linear in the query's length,
//! bounds the distinct terms, and stops once the caller has gone
//! ([`QueryBudget::is_cancelled`]).
//!
//! Filters ([`apply_filters`]) restrict the matches without changing scores.

use std::collections::HashMap;

use fanout_proto::search::limits::{LimitExceeded, QueryLimits, check_query};
use fanout_proto::search::v1::TermFilter;
use fanout_proto::status::quote;
use tantivy::query::{
    BooleanQuery, BoostQuery, ConstScoreQuery, DisjunctionMaxQuery, Occur, Query, QueryParser,
    QueryParserError, TermQuery,
};
use tantivy::schema::IndexRecordOption;
use tantivy::{Index, Score, Term};

pub use fanout_proto::search::v1::QueryMode;

use crate::LeafError;
use crate::schema::{ID_FIELD, QUERY_STOP_WORDS, SearchFields, unstemmed_english_analyzer};

/// Share of the weaker field's score added to the better one's ("best fields").
pub const BEST_FIELDS_TIE_BREAKER: Score = 0.5;

/// Words analysed between two looks at [`QueryBudget::is_cancelled`].
const WORDS_BETWEEN_CANCELLATION_CHECKS: usize = 64;

/// What building one query may cost, and how to tell that nobody waits for
/// it any more.
pub struct QueryBudget<'a> {
    pub limits: &'a QueryLimits,
    /// True once the caller has gone or its deadline has passed.
    pub is_cancelled: &'a dyn Fn() -> bool,
}

impl QueryBudget<'static> {
    /// The default limits, never cancelled: for tools and tests.
    pub fn unbounded_in_time() -> QueryBudget<'static> {
        QueryBudget {
            limits: &QueryLimits::DEFAULT,
            is_cancelled: &|| false,
        }
    }
}

/// Builds the tantivy query for `query` in `mode` against `index` (which must
/// have fanout's schema and analyzers registered), within the default limits.
pub fn build_query(
    index: &Index,
    query: &str,
    mode: QueryMode,
) -> Result<Box<dyn Query>, LeafError> {
    build_query_within(index, query, mode, &QueryBudget::unbounded_in_time())
}

/// [`build_query`] within `budget`: over a limit the query is refused with
/// [`LeafError::QueryLimit`]; once cancelled, building stops with
/// [`LeafError::Cancelled`].
pub fn build_query_within(
    index: &Index,
    query: &str,
    mode: QueryMode,
    budget: &QueryBudget<'_>,
) -> Result<Box<dyn Query>, LeafError> {
    check_query(query, mode, budget.limits)?;
    let fields = SearchFields::from_schema(&index.schema())?;
    match mode {
        QueryMode::Natural => build_natural_query(index, &fields, query, budget),
        QueryMode::Syntax => build_syntax_query(index, &fields, query),
    }
}

/// One analyzed query term and how many times the query holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NaturalQueryTerm {
    /// The term as indexed (lowercased, stemmed).
    pub text: String,
    pub occurrences: u32,
}

/// The terms a natural-mode query searches for, in order of first appearance.
pub fn natural_query_terms(index: &Index, query: &str) -> Result<Vec<NaturalQueryTerm>, LeafError> {
    natural_query_terms_within(index, query, &QueryBudget::unbounded_in_time())
}

fn natural_query_terms_within(
    index: &Index,
    query: &str,
    budget: &QueryBudget<'_>,
) -> Result<Vec<NaturalQueryTerm>, LeafError> {
    let fields = SearchFields::from_schema(&index.schema())?;
    // The analyzer the text field was indexed with: query terms are stemmed
    // exactly like document terms.
    let mut index_analyzer = index.tokenizer_for_field(fields.text)?;
    let mut word_analyzer = unstemmed_english_analyzer();
    let mut terms: Vec<NaturalQueryTerm> = Vec::new();
    // Term text -> its index in `terms`: one lookup per word, never a scan.
    let mut positions: HashMap<String, usize> = HashMap::new();
    let mut words = word_analyzer.token_stream(query);
    let mut words_seen = 0usize;
    while let Some(word) = words.next() {
        words_seen += 1;
        if words_seen.is_multiple_of(WORDS_BETWEEN_CANCELLATION_CHECKS) && (budget.is_cancelled)() {
            return Err(LeafError::Cancelled);
        }
        if QUERY_STOP_WORDS.contains(&word.text.as_str()) {
            continue;
        }
        let mut stemmed = index_analyzer.token_stream(&word.text);
        while let Some(token) = stemmed.next() {
            if let Some(&position) = positions.get(&token.text) {
                terms[position].occurrences += 1;
                continue;
            }
            if terms.len() == budget.limits.max_terms {
                return Err(LeafError::QueryLimit(LimitExceeded::Terms {
                    terms: terms.len() + 1,
                    limit: budget.limits.max_terms,
                }));
            }
            positions.insert(token.text.clone(), terms.len());
            terms.push(NaturalQueryTerm {
                text: token.text.clone(),
                occurrences: 1,
            });
        }
    }
    Ok(terms)
}

fn build_natural_query(
    index: &Index,
    fields: &SearchFields,
    query: &str,
    budget: &QueryBudget<'_>,
) -> Result<Box<dyn Query>, LeafError> {
    let terms = natural_query_terms_within(index, query, budget)?;
    if terms.is_empty() {
        return Err(LeafError::QueryHasNoSearchableTerms);
    }
    let clauses = terms
        .into_iter()
        .map(|term| {
            let in_field = |field| -> Box<dyn Query> {
                Box::new(TermQuery::new(
                    Term::from_field_text(field, &term.text),
                    IndexRecordOption::WithFreqs,
                ))
            };
            let best_fields: Box<dyn Query> = Box::new(DisjunctionMaxQuery::with_tie_breaker(
                vec![in_field(fields.title), in_field(fields.text)],
                BEST_FIELDS_TIE_BREAKER,
            ));
            let clause = if term.occurrences > 1 {
                // Query term counts are small; exact in f32.
                Box::new(BoostQuery::new(best_fields, term.occurrences as Score))
            } else {
                best_fields
            };
            (Occur::Should, clause)
        })
        .collect();
    Ok(Box::new(BooleanQuery::new(clauses)))
}

/// Parses a syntax-mode query (already measured by [`check_query`], so no
/// deeper than the depth limit).
fn build_syntax_query(
    index: &Index,
    fields: &SearchFields,
    query: &str,
) -> Result<Box<dyn Query>, LeafError> {
    if query.trim().is_empty() {
        return Err(LeafError::QueryHasNoSearchableTerms);
    }
    let parser = QueryParser::for_index(index, vec![fields.title, fields.text]);
    parser
        .parse_query(query)
        .map_err(|error| describe_parse_error(query, error))
}

/// A parse failure as an error the caller can act on: for syntax errors the
/// strict parser says nothing useful, so ask the lenient one where it failed.
fn describe_parse_error(query: &str, error: QueryParserError) -> LeafError {
    let QueryParserError::SyntaxError(_) = error else {
        let message = match error {
            QueryParserError::FieldDoesNotExist(field) => {
                format!("no field named {}", quote(&field))
            }
            // Other messages may quote the query too: cut them short.
            other => quote(&other.to_string()),
        };
        return LeafError::QuerySyntax {
            message,
            position: None,
        };
    };
    let (_, lenient_errors) = tantivy::query_grammar::parse_query_lenient(query);
    match lenient_errors.into_iter().next() {
        Some(first) => LeafError::QuerySyntax {
            message: first.message,
            position: Some(first.pos),
        },
        None => LeafError::QuerySyntax {
            message: format!("cannot parse {}", quote(query)),
            position: None,
        },
    }
}

/// Restricts `query` to documents matching every filter, without changing
/// scores: each filter is a MUST clause scoring a constant 0.
pub fn apply_filters(
    query: Box<dyn Query>,
    filters: &[TermFilter],
    fields: &SearchFields,
) -> Result<Box<dyn Query>, LeafError> {
    if filters.is_empty() {
        return Ok(query);
    }
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, query)];
    for filter in filters {
        if filter.field != ID_FIELD {
            return Err(LeafError::UnknownFilterField {
                field: filter.field.clone(),
            });
        }
        let matches_id = TermQuery::new(
            Term::from_field_text(fields.id, &filter.value),
            IndexRecordOption::Basic,
        );
        clauses.push((
            Occur::Must,
            Box::new(ConstScoreQuery::new(Box::new(matches_id), 0.0)),
        ));
    }
    Ok(Box::new(BooleanQuery::new(clauses)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::index_in_ram;
    use tantivy::TantivyDocument;
    use tantivy::collector::TopDocs;
    use tantivy::schema::Value;

    pub(crate) fn small_index() -> Index {
        index_in_ram(&[&[
            (
                "d1",
                "Rust search engines",
                "Fast full-text search in Rust.",
            ),
            ("d2", "Cooking pasta", "Boil the water, add salt and pasta."),
            (
                "d3",
                "Search at scale",
                "Tail latency: hedged requests in search.",
            ),
            ("d4", "Rust language", "Ownership and borrowing."),
        ]])
    }

    fn term_texts(index: &Index, query: &str) -> Vec<String> {
        natural_query_terms(index, query)
            .unwrap()
            .into_iter()
            .map(|term| term.text)
            .collect()
    }

    fn top_ids(index: &Index, query: &dyn Query) -> Vec<(String, Score)> {
        let searcher = index.reader().unwrap().searcher();
        let fields = SearchFields::from_schema(&index.schema()).unwrap();
        searcher
            .search(query, &TopDocs::with_limit(10).order_by_score())
            .unwrap()
            .into_iter()
            .map(|(score, address)| {
                let document: TantivyDocument = searcher.doc(address).unwrap();
                let id = document
                    .get_first(fields.id)
                    .and_then(|value| value.as_str())
                    .unwrap()
                    .to_string();
                (id, score)
            })
            .collect()
    }

    #[test]
    fn punctuation_is_never_syntax_in_natural_mode() {
        let index = small_index();
        assert_eq!(
            term_texts(
                &index,
                "full-text: (Rust) \"search\" +engines -fast AND OR title:x"
            ),
            [
                "full", "text", "rust", "search", "engin", "fast", "titl", "x"
            ]
        );
        for query in [
            "\"unbalanced",
            "(((rust",
            "a:b:c",
            "+-+ rust",
            "[1 TO 2",
            "rust^2 ~x*",
        ] {
            assert!(
                build_query(&index, query, QueryMode::Natural).is_ok(),
                "{query:?} should be accepted"
            );
        }
    }

    #[test]
    fn stop_words_are_dropped_before_stemming_and_repeats_counted() {
        let index = small_index();
        let terms = natural_query_terms(&index, "The rust of the Rusts is in THIS search").unwrap();
        assert_eq!(
            terms,
            [
                NaturalQueryTerm {
                    text: "rust".into(),
                    occurrences: 2
                },
                NaturalQueryTerm {
                    text: "search".into(),
                    occurrences: 1
                },
            ]
        );
        // "thing" is not a stop word, though it stems into nothing like one.
        assert_eq!(term_texts(&index, "things"), ["thing"]);
    }

    #[test]
    fn a_query_of_only_stop_words_and_punctuation_is_invalid() {
        let index = small_index();
        for query in ["", "   ", "the a of", "!!! -- ::", "To be or not to be"] {
            let error = build_query(&index, query, QueryMode::Natural)
                .err()
                .unwrap();
            assert!(
                matches!(error, LeafError::QueryHasNoSearchableTerms),
                "{query:?}"
            );
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert_eq!(status.message(), "query has no searchable terms");
        }
    }

    #[test]
    fn natural_queries_are_bounded_in_distinct_terms_and_stop_when_cancelled() {
        let index = small_index();
        let limits = QueryLimits {
            max_terms: 3,
            ..QueryLimits::DEFAULT
        };
        let budget = QueryBudget {
            limits: &limits,
            is_cancelled: &|| false,
        };
        // Repeats and stop words do not count; the fourth distinct term does.
        assert!(
            build_query_within(
                &index,
                "rust Rust the search pasta",
                QueryMode::Natural,
                &budget
            )
            .is_ok()
        );
        let error = build_query_within(
            &index,
            "rust search pasta water",
            QueryMode::Natural,
            &budget,
        )
        .err()
        .unwrap();
        assert_eq!(
            error.to_string(),
            "query has more than the limit of 3 distinct terms (max query terms)"
        );
        assert_eq!(
            tonic::Status::from(error).code(),
            tonic::Code::InvalidArgument
        );

        let many_words: String = (0..1000).map(|n| format!("w{n} ")).collect();
        let cancelled = QueryBudget {
            limits: &QueryLimits::DEFAULT,
            is_cancelled: &|| true,
        };
        let error = build_query_within(&index, &many_words, QueryMode::Natural, &cancelled)
            .err()
            .unwrap();
        assert!(matches!(error, LeafError::Cancelled), "{error}");
    }

    #[test]
    fn queries_over_the_limits_never_reach_the_parser() {
        let index = small_index();
        let deep = format!("{}rust", "(".repeat(100_000 / 8));
        let error = build_query(&index, &deep, QueryMode::Syntax).err().unwrap();
        assert!(matches!(error, LeafError::QueryLimit(_)), "{error}");
        let error = build_query(&index, &"NOT ".repeat(40), QueryMode::Syntax)
            .err()
            .unwrap();
        assert!(matches!(error, LeafError::QueryLimit(_)), "{error}");
    }

    #[test]
    fn natural_queries_score_best_fields() {
        let index = small_index();
        let query = build_query(&index, "rust search", QueryMode::Natural).unwrap();
        let hits = top_ids(&index, query.as_ref());
        // d1 has both words in title and text.
        assert_eq!(hits[0].0, "d1");
        assert_eq!(hits.len(), 3, "{hits:?}");
    }

    #[test]
    fn syntax_mode_parses_tantivy_syntax() {
        let index = small_index();
        let query = build_query(&index, "title:rust AND -engines", QueryMode::Syntax).unwrap();
        let ids: Vec<_> = top_ids(&index, query.as_ref())
            .into_iter()
            .map(|hit| hit.0)
            .collect();
        assert_eq!(ids, ["d4"]);
    }

    #[test]
    fn syntax_errors_are_invalid_arguments_with_a_position() {
        let index = small_index();
        for query in ["title:(rust", "\"unclosed phrase", "nosuchfield:x"] {
            let error = build_query(&index, query, QueryMode::Syntax).err().unwrap();
            assert!(
                matches!(error, LeafError::QuerySyntax { .. }),
                "{query:?}: {error}"
            );
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{query:?}");
        }
        let error = build_query(&index, "title:(rust", QueryMode::Syntax)
            .err()
            .unwrap();
        let LeafError::QuerySyntax { position, .. } = error else {
            unreachable!("checked above");
        };
        assert!(position.is_some(), "the lenient parser locates the error");
    }

    #[test]
    fn filters_restrict_matches_without_changing_scores() {
        let index = small_index();
        let fields = SearchFields::from_schema(&index.schema()).unwrap();
        let unfiltered = top_ids(
            &index,
            build_query(&index, "rust search", QueryMode::Natural)
                .unwrap()
                .as_ref(),
        );
        for (id, score) in &unfiltered {
            let filter = TermFilter {
                field: "id".into(),
                value: id.clone(),
            };
            let query = build_query(&index, "rust search", QueryMode::Natural).unwrap();
            let filtered = apply_filters(query, &[filter], &fields).unwrap();
            let hits = top_ids(&index, filtered.as_ref());
            assert_eq!(hits.len(), 1);
            assert_eq!(&hits[0].0, id);
            assert_eq!(
                hits[0].1.to_bits(),
                score.to_bits(),
                "score of {id} changed"
            );
        }
        let query = build_query(&index, "rust", QueryMode::Natural).unwrap();
        let unknown = TermFilter {
            field: "title".into(),
            value: "x".into(),
        };
        let error = apply_filters(query, &[unknown], &fields).err().unwrap();
        assert_eq!(
            tonic::Status::from(error).code(),
            tonic::Code::InvalidArgument
        );
    }
}
