//! The limits on a search query, part of the search contract: the root checks
//! them before any leaf is called, and every leaf checks them again (a leaf
//! must survive direct calls). Both sides use [`check_query`], one linear
//! pass over the query's bytes that needs no index, so root and leaf agree
//! on what a query costs; a leaf also bounds the distinct terms its analyzer
//! makes of a natural-mode query ([`QueryLimits::max_terms`]).
//!
//! What is counted:
//! - **bytes** of the query string, in both modes;
//! - **nesting depth** of a syntax-mode query: one level per open `(`
//!   (`field:(` included) and per `NOT` applying to what follows it, as
//!   deep as tantivy's recursive parser would go;
//! - **clauses**: words and phrases of a syntax-mode query, words of a
//!   natural-mode one (letters and digits; everything else separates words).
//!
//! ```
//! use fanout_proto::search::limits::{QueryLimits, check_query};
//! use fanout_proto::search::v1::QueryMode;
//!
//! let limits = QueryLimits::DEFAULT;
//! assert!(check_query("title:(rust AND -java)", QueryMode::Syntax, &limits).is_ok());
//! let deep = format!("{}rust", "(".repeat(100));
//! let error = check_query(&deep, QueryMode::Syntax, &limits).unwrap_err();
//! assert_eq!(
//!     error.to_string(),
//!     "query nests deeper than the limit of 32 levels (max query depth)"
//! );
//! ```

use std::fmt;

use crate::search::v1::QueryMode;

/// The most a query may cost. [`QueryLimits::DEFAULT`] is what root and leaf
/// use unless told otherwise (`--max-query-bytes`, `--max-query-depth`,
/// `--max-query-clauses`, `--max-query-terms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Bytes of the query string.
    pub max_bytes: usize,
    /// Nesting depth of a syntax-mode query.
    pub max_depth: usize,
    /// Words and phrases (syntax mode) or words (natural mode).
    pub max_clauses: usize,
    /// Distinct terms after analysis (natural mode; checked by the leaf,
    /// whose analyzer makes them).
    pub max_terms: usize,
}

impl QueryLimits {
    pub const DEFAULT: QueryLimits = QueryLimits {
        max_bytes: 16 * 1024,
        max_depth: 32,
        max_clauses: 1024,
        max_terms: 1024,
    };

    /// Whether every limit is at least 1.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("max query bytes", self.max_bytes),
            ("max query depth", self.max_depth),
            ("max query clauses", self.max_clauses),
            ("max query terms", self.max_terms),
        ] {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        Ok(())
    }
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A query over one of the [`QueryLimits`]; its message names the limit and
/// quotes nothing of the query. The counts are where the scan stopped (the
/// limit plus one), except for bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    Bytes { bytes: usize, limit: usize },
    Depth { depth: usize, limit: usize },
    Clauses { clauses: usize, limit: usize },
    Terms { terms: usize, limit: usize },
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LimitExceeded::Bytes { bytes, limit } => write!(
                f,
                "query is {bytes} bytes long, more than the limit of {limit} (max query bytes)"
            ),
            LimitExceeded::Depth { limit, .. } => write!(
                f,
                "query nests deeper than the limit of {limit} levels (max query depth)"
            ),
            LimitExceeded::Clauses { limit, .. } => write!(
                f,
                "query has more than the limit of {limit} clauses (max query clauses)"
            ),
            LimitExceeded::Terms { limit, .. } => write!(
                f,
                "query has more than the limit of {limit} distinct terms (max query terms)"
            ),
        }
    }
}

impl std::error::Error for LimitExceeded {}

/// What [`check_query`] measured of a query within the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueryCost {
    pub bytes: usize,
    pub depth: usize,
    pub clauses: usize,
}

/// Measures `query` in `mode` in one pass and checks it against `limits`
/// (all but [`QueryLimits::max_terms`]). The scan stops at the first limit
/// passed, so a hostile query costs at most its length.
pub fn check_query(
    query: &str,
    mode: QueryMode,
    limits: &QueryLimits,
) -> Result<QueryCost, LimitExceeded> {
    if query.len() > limits.max_bytes {
        return Err(LimitExceeded::Bytes {
            bytes: query.len(),
            limit: limits.max_bytes,
        });
    }
    let cost = match mode {
        QueryMode::Natural => QueryCost {
            bytes: query.len(),
            depth: 0,
            clauses: count_words(query, limits.max_clauses)?,
        },
        QueryMode::Syntax => scan_syntax(query, limits)?,
    };
    Ok(cost)
}

/// Words as the analyzer splits them: runs of letters and digits.
fn count_words(query: &str, limit: usize) -> Result<usize, LimitExceeded> {
    let mut words = 0;
    let mut in_word = false;
    for character in query.chars() {
        let is_word_char = character.is_alphanumeric();
        if is_word_char && !in_word {
            words += 1;
            if words > limit {
                return Err(LimitExceeded::Clauses {
                    clauses: words,
                    limit,
                });
            }
        }
        in_word = is_word_char;
    }
    Ok(words)
}

/// One pass over a query in tantivy's syntax: tokens are `(`, `)`, phrases
/// in double quotes and runs of anything else (a backslash escapes the next
/// character), separated by whitespace.
fn scan_syntax(query: &str, limits: &QueryLimits) -> Result<QueryCost, LimitExceeded> {
    let mut nesting = Nesting::default();
    let mut clauses = 0;
    let mut chars = query.char_indices().peekable();
    let count_clause = |clauses: &mut usize| {
        *clauses += 1;
        if *clauses > limits.max_clauses {
            return Err(LimitExceeded::Clauses {
                clauses: *clauses,
                limit: limits.max_clauses,
            });
        }
        Ok(())
    };
    while let Some((start, character)) = chars.next() {
        match character {
            _ if character.is_whitespace() => {}
            '(' => nesting.open_group(limits.max_depth)?,
            ')' => nesting.close_group(),
            '"' => {
                // A phrase: up to the closing quote (or the end).
                let mut escaped = false;
                for (_, inner) in chars.by_ref() {
                    match inner {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break,
                        _ => escaped = false,
                    }
                }
                nesting.other_token();
                count_clause(&mut clauses)?;
            }
            _ => {
                // A word (which may end in `field:` before a group).
                let mut end = start + character.len_utf8();
                let mut escaped = character == '\\';
                while let Some(&(index, next)) = chars.peek() {
                    if !escaped && (next.is_whitespace() || next == '(' || next == ')') {
                        break;
                    }
                    escaped = !escaped && next == '\\';
                    end = index + next.len_utf8();
                    chars.next();
                }
                match &query[start..end] {
                    "NOT" => nesting.not_keyword(limits.max_depth)?,
                    "AND" | "OR" | "+" | "-" => nesting.other_token(),
                    // `field:` before a group names the group's field.
                    word if word.ends_with(':') => nesting.other_token(),
                    _ => {
                        nesting.other_token();
                        count_clause(&mut clauses)?;
                    }
                }
            }
        }
    }
    Ok(QueryCost {
        bytes: query.len(),
        depth: nesting.max_depth,
        clauses,
    })
}

/// The parser's recursion depth as the scan goes: open groups, plus the
/// `NOT`s in a row that apply to what follows them.
#[derive(Default)]
struct Nesting {
    /// The depth at which each open group started.
    open_groups: Vec<usize>,
    /// Depth inside the innermost open group (0 outside any).
    base: usize,
    /// `NOT`s in a row just before the current token.
    not_chain: usize,
    max_depth: usize,
}

impl Nesting {
    fn reach(&mut self, depth: usize, limit: usize) -> Result<(), LimitExceeded> {
        self.max_depth = self.max_depth.max(depth);
        if depth > limit {
            return Err(LimitExceeded::Depth { depth, limit });
        }
        Ok(())
    }

    fn open_group(&mut self, limit: usize) -> Result<(), LimitExceeded> {
        let depth = self.base + self.not_chain + 1;
        self.open_groups.push(self.base);
        self.base = depth;
        self.not_chain = 0;
        self.reach(depth, limit)
    }

    fn close_group(&mut self) {
        // An unbalanced `)` is the parser's error to report, not a depth.
        self.base = self.open_groups.pop().unwrap_or(0);
        self.not_chain = 0;
    }

    fn not_keyword(&mut self, limit: usize) -> Result<(), LimitExceeded> {
        self.not_chain += 1;
        self.reach(self.base + self.not_chain, limit)
    }

    fn other_token(&mut self) {
        self.not_chain = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syntax(query: &str) -> Result<QueryCost, LimitExceeded> {
        check_query(query, QueryMode::Syntax, &QueryLimits::DEFAULT)
    }

    fn natural(query: &str) -> Result<QueryCost, LimitExceeded> {
        check_query(query, QueryMode::Natural, &QueryLimits::DEFAULT)
    }

    #[test]
    fn measures_ordinary_queries() {
        let cost = syntax("title:(rust AND -java) \"exact phrase\" NOT emacs").unwrap();
        assert_eq!((cost.depth, cost.clauses), (1, 4));
        let cost = natural("free software, video-editor!").unwrap();
        assert_eq!((cost.depth, cost.clauses), (0, 4));
        assert_eq!(natural("").unwrap().clauses, 0);
    }

    #[test]
    fn counts_the_depth_of_groups_and_not_chains() {
        assert_eq!(syntax("((a))").unwrap().depth, 2);
        assert_eq!(syntax("(a) (b) (c)").unwrap().depth, 1);
        assert_eq!(syntax("NOT NOT NOT a").unwrap().depth, 3);
        // NOT clauses side by side do not nest.
        assert_eq!(syntax("a NOT b NOT c NOT d").unwrap().depth, 1);
        // A NOT before a group encloses it.
        assert_eq!(syntax("NOT (NOT (a))").unwrap().depth, 4);
        assert_eq!(syntax("-(-(a))").unwrap().depth, 2);
        assert_eq!(syntax("title:(text:(a))").unwrap().depth, 2);
        // Parentheses inside a phrase or escaped are text.
        assert_eq!(syntax("\"((((\" a\\(\\(").unwrap().depth, 0);
        // Unbalanced closing parentheses do not go below zero.
        assert_eq!(syntax(")))(a)").unwrap().depth, 1);
    }

    #[test]
    fn refuses_the_requests_of_death_at_the_limit() {
        for deep in [
            format!("{}rust", "(".repeat(1000)),
            format!("{}rust{}", "(".repeat(5000), ")".repeat(5000)),
            format!("{}rust", "title:(".repeat(2000)),
            format!("{}rust", "-(".repeat(1000)),
        ] {
            let error = syntax(&deep).unwrap_err();
            assert_eq!(
                error,
                LimitExceeded::Depth {
                    depth: 33,
                    limit: 32
                }
            );
        }
        let nots = format!("{}rust", "NOT ".repeat(10_000));
        assert!(matches!(
            check_query(&nots, QueryMode::Syntax, &QueryLimits::DEFAULT),
            Err(LimitExceeded::Bytes { .. })
        ));
        let nots = format!("{}rust", "NOT ".repeat(40));
        assert_eq!(
            syntax(&nots).unwrap_err(),
            LimitExceeded::Depth {
                depth: 33,
                limit: 32
            }
        );
        let at_the_limit = format!("{}rust{}", "(".repeat(32), ")".repeat(32));
        assert_eq!(syntax(&at_the_limit).unwrap().depth, 32);
    }

    #[test]
    fn bounds_bytes_and_clauses() {
        let long = "a".repeat(QueryLimits::DEFAULT.max_bytes + 1);
        assert_eq!(
            natural(&long).unwrap_err(),
            LimitExceeded::Bytes {
                bytes: 16_385,
                limit: 16_384
            }
        );
        let many = "w ".repeat(1025);
        assert_eq!(
            natural(&many).unwrap_err(),
            LimitExceeded::Clauses {
                clauses: 1025,
                limit: 1024
            }
        );
        assert_eq!(
            syntax(&many).unwrap_err(),
            LimitExceeded::Clauses {
                clauses: 1025,
                limit: 1024
            }
        );
        // Operators are not clauses.
        let operators = "a AND ".repeat(1000);
        assert_eq!(syntax(&operators).unwrap().clauses, 1000);
    }

    #[test]
    fn messages_name_the_limit_and_quote_nothing() {
        let error = natural(&"x".repeat(20_000)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "query is 20000 bytes long, more than the limit of 16384 (max query bytes)"
        );
        let error = LimitExceeded::Terms {
            terms: 2000,
            limit: 1024,
        };
        assert_eq!(
            error.to_string(),
            "query has more than the limit of 1024 distinct terms (max query terms)"
        );
    }

    #[test]
    fn zero_limits_are_invalid() {
        assert!(QueryLimits::DEFAULT.validate().is_ok());
        let limits = QueryLimits {
            max_depth: 0,
            ..QueryLimits::DEFAULT
        };
        assert_eq!(
            limits.validate().unwrap_err(),
            "max query depth must be at least 1"
        );
    }
}
