//! Ranking metrics as trec_eval (and so BEIR) computes them, for one query:
//! a ranked list of document ids against graded judgments (`doc id -> grade`).
//!
//! - nDCG@k: gain = the grade (linear, as trec_eval), discount log2(rank + 1),
//!   ideal = the judged grades sorted descending.
//! - Recall@k: relevant documents (grade > 0) in the top k over all relevant ones.
//! - AP@k: the precision at each relevant hit in the top k, summed, over all
//!   relevant documents (so MAP@100 is the mean of AP@100).
//!
//! A document ranked twice counts once, at its first rank.

use std::collections::{HashMap, HashSet};

/// Relevance grades of one query's judged documents.
pub type Judgments = HashMap<String, i32>;

/// Normalized discounted cumulative gain of the first `cutoff` results.
pub fn ndcg_at(ranked: &[String], judgments: &Judgments, cutoff: usize) -> f64 {
    let gains: Vec<f64> = first_occurrences(ranked, cutoff)
        .map(|id| f64::from(grade(judgments, id)))
        .collect();
    let mut ideal_gains: Vec<f64> = judgments
        .values()
        .filter(|grade| **grade > 0)
        .map(|grade| f64::from(*grade))
        .collect();
    ideal_gains.sort_by(|a, b| b.total_cmp(a));
    ideal_gains.truncate(cutoff);
    let ideal = discounted_cumulative_gain(&ideal_gains);
    if ideal == 0.0 {
        return 0.0;
    }
    discounted_cumulative_gain(&gains) / ideal
}

/// Share of the relevant documents found in the first `cutoff` results.
pub fn recall_at(ranked: &[String], judgments: &Judgments, cutoff: usize) -> f64 {
    let relevant = relevant_count(judgments);
    if relevant == 0 {
        return 0.0;
    }
    let found = first_occurrences(ranked, cutoff)
        .filter(|id| grade(judgments, id) > 0)
        .count();
    found as f64 / relevant as f64
}

/// Average precision of the first `cutoff` results.
pub fn average_precision_at(ranked: &[String], judgments: &Judgments, cutoff: usize) -> f64 {
    let relevant = relevant_count(judgments);
    if relevant == 0 {
        return 0.0;
    }
    let mut found = 0_usize;
    let mut precision_sum = 0.0;
    for (index, id) in first_occurrences(ranked, cutoff).enumerate() {
        if grade(judgments, id) > 0 {
            found += 1;
            precision_sum += found as f64 / (index + 1) as f64;
        }
    }
    precision_sum / relevant as f64
}

fn discounted_cumulative_gain(gains: &[f64]) -> f64 {
    gains
        .iter()
        .enumerate()
        .map(|(index, gain)| gain / ((index + 2) as f64).log2())
        .sum()
}

fn grade(judgments: &Judgments, id: &str) -> i32 {
    judgments.get(id).copied().unwrap_or(0).max(0)
}

fn relevant_count(judgments: &Judgments) -> usize {
    judgments.values().filter(|grade| **grade > 0).count()
}

/// The first `cutoff` distinct ids, in rank order.
fn first_occurrences(ranked: &[String], cutoff: usize) -> impl Iterator<Item = &str> {
    let mut seen = HashSet::new();
    ranked
        .iter()
        .map(String::as_str)
        .filter(move |id| seen.insert(*id))
        .take(cutoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|id| (*id).to_owned()).collect()
    }

    fn judgments(grades: &[(&str, i32)]) -> Judgments {
        grades
            .iter()
            .map(|(id, grade)| ((*id).to_owned(), *grade))
            .collect()
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < 1e-9, "{actual} != {expected}");
    }

    // Ranked a b c d; relevant b (2), d (1), e (1, never retrieved).
    // DCG  = 2/log2(3) + 1/log2(5)            = 1.692536065216308
    // IDCG = 2/log2(2) + 1/log2(3) + 1/log2(4) = 3.130929753571458
    #[test]
    fn binary_and_graded_hits_with_a_missed_relevant_document() {
        let ranked = ids(&["a", "b", "c", "d"]);
        let judged = judgments(&[("b", 2), ("d", 1), ("e", 1), ("a", 0)]);
        assert_close(ndcg_at(&ranked, &judged, 10), 0.540_585_767_945_010_2);
        assert_close(recall_at(&ranked, &judged, 100), 2.0 / 3.0);
        // Precision 1/2 at rank 2 and 2/4 at rank 4, over 3 relevant documents.
        assert_close(average_precision_at(&ranked, &judged, 100), 1.0 / 3.0);
    }

    #[test]
    fn the_cutoff_drops_later_hits_and_the_ideal_too() {
        let ranked = ids(&["a", "b", "c", "d"]);
        let judged = judgments(&[("b", 2), ("d", 1), ("e", 1)]);
        // DCG@2 = 2/log2(3); IDCG@2 = 2 + 1/log2(3).
        assert_close(ndcg_at(&ranked, &judged, 2), 0.479_624_933_136_262_9);
        assert_close(recall_at(&ranked, &judged, 2), 1.0 / 3.0);
        assert_close(average_precision_at(&ranked, &judged, 2), 1.0 / 6.0);
    }

    // Ranked x(3) y(0) z(1) w(2); v(3) is judged but not retrieved.
    // DCG  = 3/1 + 1/log2(4) + 2/log2(5)              = 4.361353116146786
    // IDCG = 3/1 + 3/log2(3) + 2/log2(4) + 1/log2(5)  = 6.323465818787765
    #[test]
    fn grades_are_linear_gains() {
        let ranked = ids(&["x", "y", "z", "w"]);
        let judged = judgments(&[("x", 3), ("z", 1), ("w", 2), ("v", 3)]);
        assert_close(ndcg_at(&ranked, &judged, 10), 0.689_709_289_356_588_3);
        assert_close(recall_at(&ranked, &judged, 100), 0.75);
        assert_close(
            average_precision_at(&ranked, &judged, 100),
            (1.0 + 2.0 / 3.0 + 0.75) / 4.0,
        );
    }

    #[test]
    fn a_perfect_ranking_scores_one_and_an_empty_one_zero() {
        let judged = judgments(&[("p", 2), ("q", 1)]);
        let perfect = ids(&["p", "q", "r"]);
        assert_close(ndcg_at(&perfect, &judged, 10), 1.0);
        assert_close(recall_at(&perfect, &judged, 100), 1.0);
        assert_close(average_precision_at(&perfect, &judged, 100), 1.0);
        let swapped = ids(&["q", "p"]);
        assert!(ndcg_at(&swapped, &judged, 10) < 1.0);
        assert_close(ndcg_at(&[], &judged, 10), 0.0);
        assert_close(average_precision_at(&[], &judged, 100), 0.0);
    }

    #[test]
    fn a_repeated_id_counts_once() {
        let judged = judgments(&[("p", 1), ("q", 1)]);
        let ranked = ids(&["p", "p", "q"]);
        // Without dedup p would count twice and q would sit at rank 3.
        assert_close(average_precision_at(&ranked, &judged, 100), 1.0);
        assert_close(ndcg_at(&ranked, &judged, 10), 1.0);
    }
}
