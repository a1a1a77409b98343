//! Cancellation reaches the leaf, across real processes.
//!
//! One shard, two replicas; replica 1 is slow (`--fault straggler=1x10`:
//! every call takes ten times as long, its search work included in the
//! time) and searches on a single thread. The root hedges after 0.2 ms
//! (`--hedge fixed:0.2`, with budget for every hedge), so nearly every
//! shard call, in both phases, runs on both replicas and the slow one loses.
//! From the root's own per-shard report (which replica answered, how many
//! attempts, which won) the test counts the attempts that lost on the slow
//! replica; the slow leaf, asked directly (`Leaf/Info`, `fanout-leaf-stats`
//! response metadata), must have counted them as cancelled calls, and some of
//! their search work as skipped or abandoned. A root that let losing
//! attempts run to completion would leave both counts at zero.

use std::sync::Arc;
use std::time::Duration;

use fanout_proto::search::v1::search_client::SearchClient;
use fanout_proto::search::v1::{SearchRequest, SearchResponse};
use fanout_tests::{
    BeirQuery, ClusterOptions, beir, fanout_binary, leaf_stats, search, start_cluster, within,
};
use tonic::transport::Channel;

const QUERY_TASKS: usize = 4;
const QUERIES_PER_TASK: usize = 50;
const DEADLINE: Duration = Duration::from_secs(2);
const SLOW_REPLICA: u32 = 1;

/// `QUERY_TASKS` tasks of `QUERIES_PER_TASK` searches each; panics on an
/// error or partial answer.
async fn search_stream(
    client: &SearchClient<Channel>,
    queries: &Arc<Vec<BeirQuery>>,
) -> Vec<SearchResponse> {
    let mut set = tokio::task::JoinSet::new();
    for task in 0..QUERY_TASKS {
        let client = client.clone();
        let queries = Arc::clone(queries);
        set.spawn(async move {
            let mut responses = Vec::new();
            for n in 0..QUERIES_PER_TASK {
                let query = &queries[(task * QUERIES_PER_TASK + n) % queries.len()];
                let request = SearchRequest {
                    query: query.text.clone(),
                    k: 10,
                    ..Default::default()
                };
                let response = search(&client, request, DEADLINE)
                    .await
                    .unwrap_or_else(|status| panic!("query {} failed: {status:?}", query.id));
                let coverage = response.coverage.clone().unwrap_or_default();
                assert_eq!(
                    coverage.shards_answered, 1,
                    "query {}: {coverage:?}",
                    query.id
                );
                responses.push(response);
            }
            responses
        });
    }
    let all = within(
        Duration::from_secs(120),
        "the search stream",
        set.join_all(),
    )
    .await
    .expect("the search stream ends");
    all.into_iter().flatten().collect()
}

/// What the root reported about the slow replica, summed over responses.
#[derive(Default)]
struct RootReport {
    /// Attempts on the slow replica whose answer was not used (both phases).
    losers_on_slow: u64,
    /// Phase-one hedges won (the primary, on the other replica, lost).
    hedges_won: u64,
    /// Phase-one answers from the slow replica.
    answered_by_slow: u64,
}

impl RootReport {
    fn add(&mut self, response: &SearchResponse, slow_addr: &str) {
        for timing in &response.shards {
            let winner_is_slow = timing.replica.ends_with(slow_addr);
            // With two replicas and no failures, a second attempt ran on
            // the replica that did not answer.
            if timing.attempts >= 2 && !winner_is_slow {
                self.losers_on_slow += 1;
            }
            self.hedges_won += u64::from(timing.hedges_won);
            self.answered_by_slow += u64::from(winner_is_slow);
            // Phase two starts on phase one's replica; a won hedge means
            // that one lost.
            if timing.fetch_attempts >= 2 {
                let fetch_won_by_hedge = timing.fetch_hedges_won > 0;
                if fetch_won_by_hedge == winner_is_slow {
                    self.losers_on_slow += 1;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_attempts_are_cancelled_at_the_leaf_and_their_work_is_skipped() {
    let queries = Arc::new(beir::scifact_test().expect("SciFact test queries load").0);
    let options = ClusterOptions::scifact(1)
        .replicas(2)
        .leaf_args_for(
            0,
            SLOW_REPLICA,
            &["--search-threads", "1", "--fault", "straggler=1x10"],
        )
        .root_args(&["--hedge", "fixed:0.2", "--hedge-budget-percent", "100"]);
    let cluster = start_cluster(&fanout_binary!(), options).await;
    let client = cluster.search_client().await.expect("client connects");
    let slow = cluster.leaf(0, SLOW_REPLICA);
    let slow_addr = slow.addr.to_string();
    let stats = || async {
        leaf_stats(slow.addr)
            .await
            .expect("the slow leaf tells its counts")
    };

    let before = stats().await;
    let responses = search_stream(&client, &queries).await;
    let mut report = RootReport::default();
    for response in &responses {
        report.add(response, &slow_addr);
    }

    // The leaf learns of a cancellation when the reset stream reaches it,
    // and the straggler sleep keeps the slow calls alive a while: wait,
    // boundedly, until its counts stop changing.
    let mut after = stats().await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = stats().await;
        if now == after {
            break;
        }
        after = now;
    }
    let calls = after.calls - before.calls;
    let cancelled = after.cancelled - before.cancelled;
    let skipped = after.work_skipped - before.work_skipped;
    let abandoned = after.work_abandoned - before.work_abandoned;
    println!(
        "root: {} attempts lost on the slow replica, {} phase-one hedges won, {} answers from it; \
         slow leaf: {calls} calls, {cancelled} cancelled, \
         {skipped} work skipped, {abandoned} work abandoned",
        report.losers_on_slow, report.hedges_won, report.answered_by_slow
    );

    assert!(
        report.losers_on_slow >= (QUERY_TASKS * QUERIES_PER_TASK) as u64,
        "the slow replica lost too few attempts ({}) for the test to say anything",
        report.losers_on_slow
    );
    // Every losing attempt the leaf saw ends as a cancelled call; one reset
    // before its handler ran is never seen, hence the slack below.
    assert!(
        cancelled <= report.losers_on_slow,
        "the leaf counted {cancelled} cancelled calls, more than the {} attempts the root dropped",
        report.losers_on_slow
    );
    assert!(
        cancelled * 2 >= report.losers_on_slow,
        "the root dropped {} attempts on the slow replica but the leaf saw only {cancelled} \
         cancelled: losing attempts ran to completion",
        report.losers_on_slow
    );
    // Each cancelled call holds at most one piece of search work, and with
    // one search thread behind four concurrent callers some of it is still
    // queued or running when its caller goes.
    assert!(
        skipped + abandoned > 0,
        "no work of the {cancelled} cancelled calls was skipped or abandoned"
    );
    assert!(
        skipped + abandoned <= cancelled,
        "{skipped} skipped + {abandoned} abandoned pieces of work, for only {cancelled} cancelled calls"
    );
}
