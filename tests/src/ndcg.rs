//! nDCG@k as trec_eval and BEIR compute it: gain = the graded judgment,
//! discount = log2(rank + 1) with ranks from 1, normalised by the ideal
//! ordering of the judged documents.

use std::collections::HashMap;

/// nDCG@k of one ranking. A query without relevant documents scores 0.
pub fn ndcg_at_k<S: AsRef<str>>(ranked_ids: &[S], judged: &HashMap<String, u32>, k: usize) -> f64 {
    let discount = |position: usize| 1.0 / ((position as f64) + 2.0).log2();
    let dcg: f64 = ranked_ids
        .iter()
        .take(k)
        .enumerate()
        .map(|(position, id)| {
            f64::from(judged.get(id.as_ref()).copied().unwrap_or(0)) * discount(position)
        })
        .sum();
    let mut ideal_gains: Vec<u32> = judged.values().copied().filter(|gain| *gain > 0).collect();
    ideal_gains.sort_unstable_by(|a, b| b.cmp(a));
    let ideal: f64 = ideal_gains
        .iter()
        .take(k)
        .enumerate()
        .map(|(position, gain)| f64::from(*gain) * discount(position))
        .sum();
    if ideal == 0.0 { 0.0 } else { dcg / ideal }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(pairs: &[(&str, u32)]) -> HashMap<String, u32> {
        pairs
            .iter()
            .map(|(id, gain)| (id.to_string(), *gain))
            .collect()
    }

    #[test]
    fn perfect_ranking_scores_one() {
        let judged = judged(&[("a", 2), ("b", 1)]);
        assert!((ndcg_at_k(&["a", "b", "x"], &judged, 10) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn one_relevant_document_at_rank_two() {
        let judged = judged(&[("a", 1)]);
        let expected = 1.0 / 3f64.log2();
        assert!((ndcg_at_k(&["x", "a"], &judged, 10) - expected).abs() < 1e-12);
    }

    #[test]
    fn graded_gains_in_the_wrong_order() {
        let judged = judged(&[("a", 2), ("b", 1)]);
        let dcg = 1.0 + 2.0 / 3f64.log2();
        let ideal = 2.0 + 1.0 / 3f64.log2();
        assert!((ndcg_at_k(&["b", "a"], &judged, 10) - dcg / ideal).abs() < 1e-12);
    }

    #[test]
    fn documents_below_k_do_not_count() {
        let judged = judged(&[("a", 1)]);
        assert_eq!(ndcg_at_k(&["x", "y", "a"], &judged, 2), 0.0);
        assert_eq!(ndcg_at_k(&["a"], &HashMap::new(), 10), 0.0);
    }
}
