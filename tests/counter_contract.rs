//! The sliding-window counter contract: every case in `cases` runs against both implementations,
//! `RedisCounter` (in `mod redis`, each test under its own key prefix; and in
//! `mod replicated_cluster`, on a Redis Cluster of three primaries with a replica each, the cases
//! spread over every primary) and `InMemoryCounter` (in `mod memory`), so they cannot drift apart.
//! Redis-only facts (one member per call, key layout, expiry, connection errors) follow in
//! `mod redis`.

use std::sync::Arc;

use sluice::ratelimit::counter::{
    CounterCheck, CounterError, CounterVerdict, InMemoryCounter, RedisCounter, Shard,
    SlidingWindowCounter,
};

const TENANT: &str = "acme";

/// Why a check failed, seen through the script call it may have shared with other requests.
fn cause(result: &Result<Vec<CounterVerdict>, CounterError>) -> Option<&CounterError> {
    result.as_ref().err().map(|err| err.call_and_cause().1)
}

/// A deadline the call is well within: these cases are about counting, not timing.
fn far_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(30)
}

#[path = "support/mod.rs"]
mod support;

use support::unique_redis_prefix as unique_prefix;

/// The Redis the suite counts in: `SLUICE_TEST_REDIS_URL`, else a server the suite starts.
async fn test_redis_url() -> String {
    support::redis_url().await
}

async fn redis_counter_with_prefix(prefix: &str) -> RedisCounter {
    let url = test_redis_url().await;
    RedisCounter::connect(&url, None, 2, prefix)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test Redis at {url} ({e}); start redis-server or set SLUICE_TEST_REDIS_URL"))
}

async fn redis_counter() -> Arc<dyn SlidingWindowCounter> {
    Arc::new(redis_counter_with_prefix(&unique_prefix()).await)
}

async fn memory_counter() -> Arc<dyn SlidingWindowCounter> {
    Arc::new(InMemoryCounter::new(10_000))
}

/// Generates one `#[tokio::test]` per case, calling `cases::<case>` with a fresh counter.
macro_rules! contract_suite {
    ($make:path; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let counter = $make().await;
                crate::cases::$case(counter).await;
            }
        )+
    };
}

macro_rules! all_cases {
    ($make:path) => {
        contract_suite!($make;
            allows_exactly_max_then_denies,
            denied_request_consumes_nothing,
            hits_above_max_never_fit,
            window_slides,
            weighted_hits_count_their_weight,
            zero_hits_check_without_counting,
            burst_limit_caps_any_one_second,
            all_or_nothing_across_enforcing_checks,
            shadow_over_limit_does_not_block_and_records_nothing,
            counter_named_twice_in_one_call_counts_both,
            remaining_and_reset_after_describe_the_window,
            never_more_than_max_in_any_window_span,
            concurrent_calls_admit_exactly_max,
            invalid_checks_are_rejected,
        );
    };
}

mod cases {
    use std::time::{Duration, Instant};

    use rand::Rng;

    use super::*;

    fn hit(key_suffix: &str, max_requests: u32, window_ms: u64) -> CounterCheck<'_> {
        CounterCheck {
            key_suffix,
            max_requests,
            window_ms,
            burst_limit: 0,
            hits: 1,
            enforcing: true,
        }
    }

    async fn check_one(
        counter: &dyn SlidingWindowCounter,
        check: CounterCheck<'_>,
    ) -> CounterVerdict {
        let verdicts = counter
            .check(TENANT, &[check], far_deadline())
            .await
            .expect("counter check");
        assert_eq!(verdicts.len(), 1);
        verdicts[0]
    }

    async fn check_all(
        counter: &dyn SlidingWindowCounter,
        checks: &[CounterCheck<'_>],
    ) -> Vec<CounterVerdict> {
        let verdicts = counter
            .check(TENANT, checks, far_deadline())
            .await
            .expect("counter check");
        assert_eq!(verdicts.len(), checks.len());
        verdicts
    }

    pub async fn allows_exactly_max_then_denies(counter: Arc<dyn SlidingWindowCounter>) {
        let check = hit("p:exact", 5, 60_000);
        for expected_remaining in (0..5).rev() {
            let verdict = check_one(&*counter, check).await;
            assert!(verdict.allowed);
            assert_eq!(verdict.remaining, expected_remaining);
        }
        for _ in 0..3 {
            let verdict = check_one(&*counter, check).await;
            assert!(!verdict.allowed, "the sixth hit in the window is denied");
            assert_eq!(verdict.remaining, 0);
        }
    }

    pub async fn denied_request_consumes_nothing(counter: Arc<dyn SlidingWindowCounter>) {
        let two = CounterCheck {
            hits: 2,
            ..hit("p:deny", 3, 60_000)
        };
        assert!(check_one(&*counter, two).await.allowed);
        for _ in 0..3 {
            let denied = check_one(&*counter, two).await;
            assert!(!denied.allowed);
            assert_eq!(denied.remaining, 1, "a denial leaves the count alone");
        }
        let one = check_one(&*counter, hit("p:deny", 3, 60_000)).await;
        assert!(
            one.allowed,
            "the hit the denials did not take is still there"
        );
        assert_eq!(one.remaining, 0);
    }

    pub async fn hits_above_max_never_fit(counter: Arc<dyn SlidingWindowCounter>) {
        let verdict = check_one(
            &*counter,
            CounterCheck {
                hits: 11,
                ..hit("p:huge", 10, 60_000)
            },
        )
        .await;
        assert!(!verdict.allowed);
        assert_eq!(verdict.remaining, 10);
        assert_eq!(verdict.reset_after_ms, 0, "nothing is counted");
    }

    pub async fn window_slides(counter: Arc<dyn SlidingWindowCounter>) {
        let check = hit("p:slide", 2, 1_000);
        let first = check_one(&*counter, check).await;
        assert!(first.allowed);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(check_one(&*counter, check).await.allowed);
        let full = check_one(&*counter, check).await;
        assert!(!full.allowed);
        assert!(
            full.reset_after_ms <= 600,
            "the first hit leaves within 600 ms: {full:?}"
        );

        // Once the first hit has left, exactly one hit is free again: a sliding window, not a
        // fixed one that would free both at once.
        tokio::time::sleep(Duration::from_millis(full.reset_after_ms + 50)).await;
        assert!(check_one(&*counter, check).await.allowed);
        assert!(!check_one(&*counter, check).await.allowed);

        // After a whole quiet window, the full quota is back.
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        assert!(check_one(&*counter, check).await.allowed);
        assert!(check_one(&*counter, check).await.allowed);
        assert!(!check_one(&*counter, check).await.allowed);
    }

    pub async fn weighted_hits_count_their_weight(counter: Arc<dyn SlidingWindowCounter>) {
        let five = CounterCheck {
            hits: 5,
            ..hit("p:weighted", 12, 60_000)
        };
        assert_eq!(check_one(&*counter, five).await.remaining, 7);
        assert_eq!(check_one(&*counter, five).await.remaining, 2);
        let denied = check_one(&*counter, five).await;
        assert!(!denied.allowed, "10 + 5 > 12");
        let two = CounterCheck { hits: 2, ..five };
        let last = check_one(&*counter, two).await;
        assert!(last.allowed);
        assert_eq!(last.remaining, 0);
    }

    pub async fn zero_hits_check_without_counting(counter: Arc<dyn SlidingWindowCounter>) {
        let probe = CounterCheck {
            hits: 0,
            ..hit("p:zero", 2, 60_000)
        };
        for _ in 0..5 {
            let verdict = check_one(&*counter, probe).await;
            assert!(verdict.allowed);
            assert_eq!(verdict.remaining, 2);
            assert_eq!(verdict.reset_after_ms, 0, "the window is still empty");
        }
        assert_eq!(
            check_one(&*counter, hit("p:zero", 2, 60_000))
                .await
                .remaining,
            1
        );
        assert_eq!(
            check_one(&*counter, hit("p:zero", 2, 60_000))
                .await
                .remaining,
            0
        );
        let at_limit = check_one(&*counter, probe).await;
        assert!(at_limit.allowed, "at the limit, not over it");
        assert_eq!(at_limit.remaining, 0);
        assert!(!check_one(&*counter, hit("p:zero", 2, 60_000)).await.allowed);
    }

    pub async fn burst_limit_caps_any_one_second(counter: Arc<dyn SlidingWindowCounter>) {
        let check = CounterCheck {
            burst_limit: 3,
            ..hit("p:burst", 100, 60_000)
        };
        let first = check_one(&*counter, check).await;
        assert!(first.allowed);
        assert_eq!(first.remaining, 2, "the burst remaining is the smaller one");
        assert!(check_one(&*counter, check).await.allowed);
        assert!(check_one(&*counter, check).await.allowed);
        let over = check_one(&*counter, check).await;
        assert!(
            !over.allowed,
            "a fourth hit within one second is over the burst limit"
        );
        assert_eq!(over.remaining, 0);

        tokio::time::sleep(Duration::from_millis(1_050)).await;
        let next = check_one(&*counter, check).await;
        assert!(next.allowed, "a new second, a new burst");
        assert_eq!(next.remaining, 2);
        let window_only = check_one(
            &*counter,
            CounterCheck {
                hits: 0,
                burst_limit: 0,
                ..check
            },
        )
        .await;
        assert_eq!(
            window_only.remaining, 96,
            "the window still counts all four hits"
        );
    }

    pub async fn all_or_nothing_across_enforcing_checks(counter: Arc<dyn SlidingWindowCounter>) {
        let roomy = hit("p:roomy", 5, 60_000);
        let tight = hit("p:tight", 1, 60_000);
        let first = check_all(&*counter, &[roomy, tight]).await;
        assert!(first[0].allowed && first[1].allowed);

        let second = check_all(&*counter, &[roomy, tight]).await;
        assert!(second[0].allowed, "the check that fits says so");
        assert_eq!(second[0].remaining, 4, "…but records nothing");
        assert!(!second[1].allowed);

        let rest = check_one(&*counter, CounterCheck { hits: 4, ..roomy }).await;
        assert!(
            rest.allowed,
            "the denied call took nothing from the roomy counter"
        );
        assert_eq!(rest.remaining, 0);
    }

    pub async fn shadow_over_limit_does_not_block_and_records_nothing(
        counter: Arc<dyn SlidingWindowCounter>,
    ) {
        let shadow = CounterCheck {
            hits: 2,
            enforcing: false,
            ..hit("p:shadow", 3, 60_000)
        };
        let enforcing = CounterCheck {
            hits: 2,
            ..hit("p:enforcing", 10, 60_000)
        };

        let first = check_all(&*counter, &[shadow, enforcing]).await;
        assert!(first[0].allowed && first[1].allowed);
        assert_eq!(first[0].remaining, 1, "a shadow check that fits is counted");

        let second = check_all(&*counter, &[shadow, enforcing]).await;
        assert!(
            !second[0].allowed,
            "the shadow check reports its would-be denial"
        );
        assert_eq!(second[0].remaining, 1);
        assert!(
            second[1].allowed,
            "a shadow check never blocks an enforcing one"
        );
        assert_eq!(second[1].remaining, 6);

        let after = check_one(&*counter, CounterCheck { hits: 1, ..shadow }).await;
        assert!(
            after.allowed,
            "the shadow's would-be denial recorded nothing"
        );
        assert_eq!(after.remaining, 0);

        // An enforcing denial records nothing for the shadow check either.
        let fresh_shadow = CounterCheck { hits: 1, ..shadow };
        let full = CounterCheck {
            key_suffix: "p:full",
            max_requests: 0,
            ..enforcing
        };
        let denied = check_all(
            &*counter,
            &[
                CounterCheck {
                    key_suffix: "p:shadow2",
                    ..fresh_shadow
                },
                full,
            ],
        )
        .await;
        assert!(denied[0].allowed && !denied[1].allowed);
        let untouched = check_one(
            &*counter,
            CounterCheck {
                key_suffix: "p:shadow2",
                hits: 0,
                ..fresh_shadow
            },
        )
        .await;
        assert_eq!(untouched.remaining, 3);
    }

    pub async fn counter_named_twice_in_one_call_counts_both(
        counter: Arc<dyn SlidingWindowCounter>,
    ) {
        let check = hit("p:twice", 20, 60_000);
        for _ in 0..8 {
            assert!(check_one(&*counter, check).await.allowed);
        }
        // Three entries recorded at one instant, with running totals 9, 10 and 11.
        let verdicts = check_all(&*counter, &[check, check, check]).await;
        for verdict in &verdicts {
            assert!(verdict.allowed);
            assert_eq!(
                verdict.remaining, 9,
                "every verdict describes the counter after the call"
            );
        }
        assert_eq!(check_one(&*counter, check).await.remaining, 8);

        // The second naming does not fit once the first is counted: all or nothing.
        let tight = hit("p:twice-tight", 1, 60_000);
        let verdicts = check_all(&*counter, &[tight, tight]).await;
        assert!(verdicts[0].allowed);
        assert!(!verdicts[1].allowed);
        assert!(
            check_one(&*counter, tight).await.allowed,
            "nothing was recorded"
        );
    }

    pub async fn remaining_and_reset_after_describe_the_window(
        counter: Arc<dyn SlidingWindowCounter>,
    ) {
        let check = hit("p:reset", 5, 2_000);
        let empty = check_one(&*counter, CounterCheck { hits: 0, ..check }).await;
        assert_eq!((empty.remaining, empty.reset_after_ms), (5, 0));

        let started = Instant::now();
        let first = check_one(&*counter, check).await;
        assert_eq!(first.remaining, 4);
        assert_eq!(
            first.reset_after_ms, 2_000,
            "the only hit leaves a whole window from now"
        );

        tokio::time::sleep(Duration::from_millis(300)).await;
        let second = check_one(&*counter, CounterCheck { hits: 3, ..check }).await;
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).expect("short test");
        assert_eq!(second.remaining, 1);
        assert!(
            second.reset_after_ms <= 1_700 && second.reset_after_ms + elapsed_ms + 5 >= 2_000,
            "the oldest hit leaves 2 s after it came: {second:?} after {elapsed_ms} ms"
        );

        let over = check_one(&*counter, CounterCheck { hits: 2, ..check }).await;
        assert!(!over.allowed);
        assert_eq!(over.remaining, 1);
        assert!(over.reset_after_ms <= second.reset_after_ms);
    }

    pub async fn never_more_than_max_in_any_window_span(counter: Arc<dyn SlidingWindowCounter>) {
        const MAX: u32 = 10;
        const WINDOW: Duration = Duration::from_millis(1_000);
        let check = hit("p:exactness", MAX, 1_000);

        // Each admitted call happened, on the counter's clock, between `sent` and `answered`.
        let mut admitted: Vec<(Instant, Instant, u32)> = Vec::new();
        let mut denied = 0;
        let started = Instant::now();
        while started.elapsed() < WINDOW * 7 / 2 {
            let hits = rand::rng().random_range(1..=3);
            let sent = Instant::now();
            let verdict = check_one(&*counter, CounterCheck { hits, ..check }).await;
            let answered = Instant::now();
            if verdict.allowed {
                admitted.push((sent, answered, hits));
            } else {
                denied += 1;
            }
            let pause = rand::rng().random_range(0..15);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }

        // Any admitted calls all answered within one window of the earliest one's sending
        // certainly fell in one window span on the counter's clock.
        for (i, &(sent_i, _, _)) in admitted.iter().enumerate() {
            let in_span: u32 = admitted[i..]
                .iter()
                .take_while(|(_, answered, _)| answered.duration_since(sent_i) < WINDOW)
                .map(|&(_, _, hits)| hits)
                .sum();
            assert!(
                in_span <= MAX,
                "{in_span} hits admitted within one window from call {i}"
            );
        }
        let total: u32 = admitted.iter().map(|&(_, _, hits)| hits).sum();
        assert!(denied > 0, "the loop pushed past the limit");
        assert!(
            total >= 2 * MAX,
            "quota returned as the window slid: {total} hits admitted over 3.5 windows"
        );
    }

    pub async fn concurrent_calls_admit_exactly_max(counter: Arc<dyn SlidingWindowCounter>) {
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    check_one(&*counter, hit("p:concurrent", 50, 60_000))
                        .await
                        .allowed
                })
            })
            .collect();
        let mut allowed = 0;
        for task in tasks {
            if task.await.expect("check task") {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 50);
        let probe = check_one(
            &*counter,
            CounterCheck {
                hits: 0,
                ..hit("p:concurrent", 50, 60_000)
            },
        )
        .await;
        assert_eq!(probe.remaining, 0);
    }

    pub async fn invalid_checks_are_rejected(counter: Arc<dyn SlidingWindowCounter>) {
        let zero_window = counter
            .check(TENANT, &[hit("p:bad", 5, 0)], far_deadline())
            .await;
        assert!(
            matches!(zero_window, Err(CounterError::InvalidCheck(_))),
            "{zero_window:?}"
        );
        let no_tenant = counter
            .check("", &[hit("p:bad", 5, 1_000)], far_deadline())
            .await;
        assert!(
            matches!(no_tenant, Err(CounterError::InvalidCheck(_))),
            "{no_tenant:?}"
        );
        let braces = counter
            .check("a}b", &[hit("p:bad", 5, 1_000)], far_deadline())
            .await;
        assert!(
            matches!(braces, Err(CounterError::InvalidCheck(_))),
            "{braces:?}"
        );
        let nothing = counter
            .check(TENANT, &[], far_deadline())
            .await
            .expect("an empty call is fine");
        assert!(nothing.is_empty());
    }
}

mod memory {
    all_cases!(crate::memory_counter);
}

mod replicated_cluster {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use sluice::ratelimit::counter::CounterError;
    use tokio::sync::OnceCell;

    use super::*;

    /// One cluster for every case of this module: three primaries, a replica each.
    static CLUSTER: OnceCell<support::OwnedRedisCluster> = OnceCell::const_new();
    /// Which primary the next case counts on.
    static NEXT_PRIMARY: AtomicUsize = AtomicUsize::new(0);

    /// The cases count for [`TENANT`]; this counter counts them for another tenant, chosen to
    /// live on a given primary, so that every primary runs its share of the contract.
    struct OnPrimary {
        counter: RedisCounter,
        tenant: String,
    }

    #[async_trait]
    impl SlidingWindowCounter for OnPrimary {
        async fn check(
            &self,
            tenant: &str,
            checks: &[CounterCheck<'_>],
            deadline: tokio::time::Instant,
        ) -> Result<Vec<CounterVerdict>, CounterError> {
            let tenant = if tenant == TENANT {
                &self.tenant
            } else {
                tenant
            };
            self.counter.check(tenant, checks, deadline).await
        }
    }

    pub(crate) async fn counter() -> Arc<dyn SlidingWindowCounter> {
        let cluster = CLUSTER
            .get_or_init(|| support::OwnedRedisCluster::start_with_replicas(3))
            .await;
        let primaries = cluster.primaries();
        let primary = primaries[NEXT_PRIMARY.fetch_add(1, Ordering::Relaxed) % primaries.len()];
        let tenant = (0..)
            .map(|i| format!("{TENANT}-{i}"))
            .find(|t| cluster.primary_of_slot(cluster.slot_of(t)) == Some(primary))
            .expect("some tenant lives on every primary");
        let counter = RedisCounter::connect(&cluster.url, None, 2, unique_prefix())
            .await
            .expect("connect to the replicated cluster");
        Arc::new(OnPrimary { counter, tenant })
    }

    all_cases!(crate::replicated_cluster::counter);
}

mod redis {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use fred::prelude::{Builder, ClientLike, Config, ServerConfig};
    use fred::types::{ClusterHash, CustomCommand};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    all_cases!(crate::redis_counter);

    /// A plain client for looking at what the counter wrote.
    async fn inspector() -> fred::clients::Client {
        let config = Config::from_url(&test_redis_url().await).expect("test Redis URL");
        let client = Builder::from_config(config).build().expect("client");
        client.init().await.expect("connect to the test Redis");
        client
    }

    async fn command<R: fred::types::FromValue>(
        client: &fred::clients::Client,
        name: &'static str,
        args: Vec<String>,
    ) -> R {
        client
            .custom(
                CustomCommand::new_static(name, ClusterHash::FirstKey, false),
                args,
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn check(key_suffix: &str, hits: u32, window_ms: u64) -> CounterCheck<'_> {
        CounterCheck {
            key_suffix,
            max_requests: 10,
            window_ms,
            burst_limit: 0,
            hits,
            enforcing: true,
        }
    }

    #[tokio::test]
    async fn weighted_call_is_one_member() {
        let prefix = unique_prefix();
        let counter = redis_counter_with_prefix(&prefix).await;
        counter
            .check(TENANT, &[check("p:w", 5, 60_000)], far_deadline())
            .await
            .expect("check");
        let key = format!("{prefix}{{{TENANT}}}:p:w");
        let inspector = inspector().await;
        assert_eq!(
            command::<i64>(&inspector, "ZCARD", vec![key.clone()]).await,
            1
        );
        counter
            .check(TENANT, &[check("p:w", 3, 60_000)], far_deadline())
            .await
            .expect("check");
        assert_eq!(command::<i64>(&inspector, "ZCARD", vec![key]).await, 2);
    }

    #[tokio::test]
    async fn keys_carry_the_tenant_hash_tag_and_expire() {
        let prefix = unique_prefix();
        let counter = redis_counter_with_prefix(&prefix).await;
        counter
            .check(
                TENANT,
                &[
                    check("p:a", 1, 2_000),
                    check("o:b", 1, 60_000),
                    check("p:probe", 0, 2_000),
                ],
                far_deadline(),
            )
            .await
            .expect("check");

        let inspector = inspector().await;
        let mut keys: Vec<String> = command(&inspector, "KEYS", vec![format!("{prefix}*")]).await;
        keys.sort();
        assert_eq!(
            keys,
            vec![
                format!("{prefix}{{acme}}:o:b"),
                format!("{prefix}{{acme}}:p:a")
            ],
            "one key per recorded counter, none for a check without hits"
        );
        let short: i64 = command(&inspector, "PTTL", vec![keys[1].clone()]).await;
        assert!((1..=3_000).contains(&short), "PTTL {short}");
        let long: i64 = command(&inspector, "PTTL", vec![keys[0].clone()]).await;
        assert!((59_000..=61_000).contains(&long), "PTTL {long}");
    }

    #[tokio::test]
    async fn members_hold_a_running_total_and_weight() {
        let prefix = unique_prefix();
        let counter = redis_counter_with_prefix(&prefix).await;
        for hits in [2, 3] {
            counter
                .check(TENANT, &[check("p:m", hits, 60_000)], far_deadline())
                .await
                .expect("check");
        }
        let inspector = inspector().await;
        let members: Vec<String> = command(
            &inspector,
            "ZRANGE",
            vec![format!("{prefix}{{acme}}:p:m"), "0".into(), "-1".into()],
        )
        .await;
        assert_eq!(members, vec!["0000000000000002:2", "0000000000000005:3"]);
    }

    /// The script's own contract for deadlines, called directly: a group's deadlines are one
    /// sorted string, and the requests whose deadline Redis's clock has passed (the first ones)
    /// are neither decided nor recorded, while the rest of the group is.
    #[tokio::test]
    async fn a_groups_late_requests_record_nothing_and_the_rest_do() {
        let prefix = unique_prefix();
        let key = format!("{prefix}{{{TENANT}}}:p:late");
        let inspector = inspector().await;
        let digits = |n: i64| format!("{n:016}");
        // Two deadlines long past, one far ahead, one without a bound.
        let deadlines = [
            digits(1),
            digits(2),
            digits(i64::MAX / 1_000),
            "9".repeat(16),
        ]
        .concat();
        let reply: Vec<fred::types::Value> = command(
            &inspector,
            "EVAL",
            vec![
                include_str!("../src/ratelimit/counter/sliding_window.lua").into(),
                "1".into(),
                key.clone(),
                // One window over 60 s; one group of 4 requests of one enforcing hit, max 100.
                "1".into(),
                "1".into(),
                "60000".into(),
                "0".into(),
                "1".into(),
                "4".into(),
                "1".into(),
                "1".into(),
                "100".into(),
                "0".into(),
                "1".into(),
                "1".into(),
                deadlines,
            ],
        )
        .await;
        // now, the window (0, -1), the key (-1, score), then the group: 2 allowed, none denied.
        assert_eq!(reply.len(), 7, "{reply:?}");
        assert_eq!(reply[5].as_i64(), Some(2), "{reply:?}");
        let members: Vec<String> = command(
            &inspector,
            "ZRANGE",
            vec![key.clone(), "0".into(), "-1".into()],
        )
        .await;
        assert_eq!(
            members,
            vec!["0000000000000002:2"],
            "only the two live requests count"
        );

        let malformed: Result<fred::types::Value, _> = inspector
            .custom(
                CustomCommand::new_static("EVAL", ClusterHash::FirstKey, false),
                vec![
                    include_str!("../src/ratelimit/counter/sliding_window.lua").to_owned(),
                    "1".into(),
                    key.clone(),
                    "1".into(),
                    "1".into(),
                    "60000".into(),
                    "0".into(),
                    "1".into(),
                    "2".into(),
                    "1".into(),
                    "1".into(),
                    "100".into(),
                    "0".into(),
                    "1".into(),
                    "1".into(),
                    digits(1), // one deadline for two requests
                ],
            )
            .await;
        assert!(malformed.is_err(), "{malformed:?}");
        let _: i64 = command(&inspector, "DEL", vec![key]).await;
    }

    #[tokio::test]
    async fn unreachable_server_is_a_connection_error() {
        let result = RedisCounter::connect("redis://127.0.0.1:1", None, 1, unique_prefix()).await;
        assert!(
            matches!(result, Err(CounterError::Connection(_))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn wrong_key_type_is_a_script_error() {
        let prefix = unique_prefix();
        let counter = redis_counter_with_prefix(&prefix).await;
        let key = format!("{prefix}{{{TENANT}}}:p:string");
        let inspector = inspector().await;
        let _: String = command(
            &inspector,
            "SET",
            vec![
                key.clone(),
                "not a counter".into(),
                "PX".into(),
                "60000".into(),
            ],
        )
        .await;
        let result = counter
            .check(TENANT, &[check("p:string", 1, 60_000)], far_deadline())
            .await;
        assert!(
            matches!(cause(&result), Some(CounterError::Script(_))),
            "{result:?}"
        );
    }

    /// Forwards one connection to the test Redis until `stalled` is set, then swallows what the
    /// client sends, as a hung server would.
    async fn stalling_proxy(upstream: (String, u16)) -> (u16, Arc<AtomicBool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let stalled = Arc::new(AtomicBool::new(false));
        let stall = Arc::clone(&stalled);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect((upstream.0.as_str(), upstream.1))
                    .await
                    .expect("connect to the test Redis");
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                let stall = Arc::clone(&stall);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                        if !stall.load(Ordering::SeqCst)
                            && server_write.write_all(&buf[..n]).await.is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        (port, stalled)
    }

    #[tokio::test]
    async fn hung_server_is_a_timeout() {
        let mut config = Config::from_url(&test_redis_url().await).expect("test Redis URL");
        let upstream = match &config.server {
            ServerConfig::Centralized { server } => (server.host.to_string(), server.port),
            other => panic!("this test needs a single Redis server, got {other:?}"),
        };
        let (port, stalled) = stalling_proxy(upstream).await;
        config.server = ServerConfig::new_centralized("127.0.0.1", port);
        let pool = Builder::from_config(config).build_pool(1).expect("pool");
        pool.init().await.expect("connect through the proxy");
        let counter = RedisCounter::new(pool, unique_prefix()).expect("counter");
        counter.set_command_timeout(Duration::from_millis(200));
        assert!(
            counter
                .check(TENANT, &[check("p:hang", 1, 60_000)], far_deadline())
                .await
                .is_ok()
        );

        stalled.store(true, Ordering::SeqCst);
        let started = Instant::now();
        let result = counter
            .check(TENANT, &[check("p:hang", 1, 60_000)], far_deadline())
            .await;
        assert!(
            matches!(cause(&result), Some(CounterError::Timeout(_))),
            "{result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    /// `remaining` of the counter `key_suffix` (limit 10) once Redis answers again after a thaw.
    async fn remaining_after_thaw(counter: &RedisCounter, key_suffix: &str) -> u32 {
        for _ in 0..50 {
            match counter
                .check(TENANT, &[check(key_suffix, 0, 60_000)], far_deadline())
                .await
            {
                Ok(verdicts) => return verdicts[0].remaining,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        panic!("Redis does not answer again after the thaw");
    }

    /// A frozen Redis runs the commands waiting on its socket when it resumes. A call its caller
    /// has already answered as failed (here: the 50 ms deadline passed) must record nothing then.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_that_reaches_redis_after_its_deadline_records_nothing() {
        let redis = support::OwnedRedis::start().await;
        let counter = RedisCounter::connect(&redis.url, None, 1, unique_prefix())
            .await
            .expect("connect to the owned Redis");
        let deadline = Duration::from_millis(50);
        counter.set_command_timeout(deadline);
        let seed = counter
            .check(TENANT, &[check("p:frozen", 1, 60_000)], far_deadline())
            .await
            .expect("Redis answers before the freeze");
        assert_eq!(seed[0].remaining, 9);

        redis.freeze();
        let mut failed = 0;
        for _ in 0..5 {
            let result = counter
                .check(
                    TENANT,
                    &[check("p:frozen", 1, 60_000)],
                    tokio::time::Instant::now() + deadline,
                )
                .await;
            assert!(
                matches!(cause(&result), Some(CounterError::Timeout(_))),
                "{result:?}"
            );
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.thaw();

        // The five calls ran when Redis resumed, after their deadlines: none of them counted.
        assert_eq!(
            remaining_after_thaw(&counter, "p:frozen").await,
            9,
            "{failed} calls answered as failed must not have counted"
        );
    }

    /// `EVALSHA` calls the server on `port` has run since it started.
    async fn evalsha_calls(port: u16) -> u64 {
        let config = Config::from_url(&format!("redis://127.0.0.1:{port}")).expect("node URL");
        let client = Builder::from_config(config).build().expect("client");
        client.init().await.expect("connect to the node");
        let stats: String = command(&client, "INFO", vec!["commandstats".into()]).await;
        let _ = client.quit().await;
        stats
            .lines()
            .find_map(|line| {
                line.strip_prefix("cmdstat_evalsha:calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// Single-hit requests of `tenants`, interleaved (`per_tenant` each), all in flight at once;
    /// the number allowed per tenant.
    async fn flood(
        counter: &RedisCounter,
        tenants: &[String],
        per_tenant: usize,
        max_requests: u32,
    ) -> Vec<usize> {
        let one = CounterCheck {
            key_suffix: "p:flood",
            max_requests,
            window_ms: 60_000,
            burst_limit: 0,
            hits: 1,
            enforcing: true,
        };
        let checks = [one];
        let calls = (0..per_tenant)
            .flat_map(|_| tenants.iter())
            .map(|tenant| async move {
                let verdicts = counter
                    .check(tenant, &checks, far_deadline())
                    .await
                    .expect("counter check");
                (tenant, verdicts[0].allowed)
            });
        let answers = futures_util::future::join_all(calls).await;
        tenants
            .iter()
            .map(|t| {
                answers
                    .iter()
                    .filter(|(tenant, allowed)| *tenant == t && *allowed)
                    .count()
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_script_calls_and_admit_exactly_max() {
        let redis = support::OwnedRedis::start().await;
        let counter = RedisCounter::connect(&redis.url, None, 2, unique_prefix())
            .await
            .expect("connect to the owned Redis");
        let before = evalsha_calls(redis.port).await;
        let allowed = flood(&counter, &[TENANT.to_owned()], 200, 50).await;
        let calls = evalsha_calls(redis.port).await - before;
        assert_eq!(allowed, [50]);
        assert!(
            (1..=20).contains(&calls),
            "200 requests took {calls} script calls"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_call_mixes_tenants_on_a_standalone_redis() {
        let redis = support::OwnedRedis::start().await;
        let counter = RedisCounter::connect(&redis.url, None, 1, unique_prefix())
            .await
            .expect("connect to the owned Redis");
        let tenants: Vec<String> = (0..8).map(|i| format!("tenant-{i}")).collect();
        let before = evalsha_calls(redis.port).await;
        let allowed = flood(&counter, &tenants, 20, 5).await;
        let calls = evalsha_calls(redis.port).await - before;
        assert_eq!(allowed, [5; 8]);
        // A queue per tenant would need at least two calls per tenant (its first request
        // alone, then the rest): 16.
        assert!(
            (1..=6).contains(&calls),
            "160 requests of 8 tenants took {calls} script calls"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tenant_maps_to_the_primary_that_holds_its_slot() {
        let cluster = support::OwnedRedisCluster::start().await;
        let counter = RedisCounter::connect(&cluster.url, None, 2, unique_prefix())
            .await
            .expect("connect to the owned cluster");
        let mut nodes = std::collections::BTreeSet::new();
        for i in 0..24 {
            let tenant = format!("tenant-{i}");
            let port = cluster
                .primary_of_slot(cluster.slot_of(&tenant))
                .expect("a primary");
            let started = Instant::now();
            let shard = loop {
                // The client's view of the cluster is read a moment after it connected.
                match counter.shard_of(&tenant) {
                    Shard::Whole if started.elapsed() < Duration::from_secs(5) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    shard => break shard,
                }
            };
            assert_eq!(
                shard,
                Shard::Node(format!("127.0.0.1:{port}").into()),
                "{tenant}"
            );
            nodes.insert(port);
        }
        assert_eq!(nodes.len(), 3, "24 tenants spread over every primary");
        let standalone =
            RedisCounter::connect(&support::redis_url().await, None, 1, unique_prefix())
                .await
                .expect("connect to the shared Redis");
        assert_eq!(standalone.shard_of("tenant-0"), Shard::Whole);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tenant_keeps_counting_exactly_while_its_slot_moves_to_another_primary() {
        // Arrange: a tenant counting on one primary
        let cluster = support::OwnedRedisCluster::start().await;
        let counter = Arc::new(
            RedisCounter::connect(&cluster.url, None, 2, unique_prefix())
                .await
                .expect("connect to the owned cluster"),
        );
        let tenant = "mover";
        let slot = cluster.slot_of(tenant);
        let from = cluster.primary_of_slot(slot).expect("a primary");
        let to = *cluster
            .primaries()
            .iter()
            .find(|port| **port != from)
            .expect("another primary");
        // A limit the run never reaches: every check is allowed and counts one hit.
        let hit = |hits| CounterCheck {
            key_suffix: "p:move",
            max_requests: 1_000_000,
            window_ms: 60_000,
            burst_limit: 0,
            hits,
            enforcing: true,
        };
        let first = counter
            .check(tenant, &[hit(1)], far_deadline())
            .await
            .expect("the first check");
        assert!(first[0].allowed);

        // Act: checks in a tight loop while the slot moves (ASK, then MOVED), and a while after
        let stop = Arc::new(AtomicBool::new(false));
        let checking = {
            let (counter, stop) = (Arc::clone(&counter), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    answers.push(counter.check(tenant, &[hit(1)], far_deadline()).await);
                }
                answers
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        cluster.move_slot(slot, to);
        tokio::time::sleep(Duration::from_millis(700)).await;
        stop.store(true, Ordering::Relaxed);
        let answers = checking.await.unwrap();

        // Assert: every check answered and counted, one hit each, on the new owner now
        let failed: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
        assert!(
            failed.is_empty(),
            "checks failed while the slot moved: {failed:?}"
        );
        assert!(answers.len() > 20, "only {} checks ran", answers.len());
        let last = counter
            .check(tenant, &[hit(0)], far_deadline())
            .await
            .expect("a read after the move");
        let counted = 1 + answers.len() as u32;
        assert_eq!(
            last[0].remaining,
            1_000_000 - counted,
            "hits counted exactly once each"
        );
        assert_eq!(cluster.primary_of_slot(slot), Some(to));
        assert!(cluster.keys_on(to) > 0, "the keys moved with the slot");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_call_holds_one_slot_on_redis_cluster() {
        let cluster = support::OwnedRedisCluster::start().await;
        let counter = RedisCounter::connect(&cluster.url, None, 2, unique_prefix())
            .await
            .expect("connect to the owned cluster");
        let tenants: Vec<String> = (0..12).map(|i| format!("tenant-{i}")).collect();
        let mut before = 0;
        for port in &cluster.ports {
            before += evalsha_calls(*port).await;
        }
        // A call holding keys of two slots would fail with CROSSSLOT, and `flood` would panic.
        let allowed = flood(&counter, &tenants, 25, 10).await;
        let mut calls = 0;
        for port in &cluster.ports {
            calls += evalsha_calls(*port).await;
        }
        let calls = calls - before;
        assert_eq!(allowed, [10; 12]);
        assert!(
            (12..100).contains(&calls),
            "300 requests of 12 tenants took {calls} script calls"
        );
        assert!(
            cluster
                .ports
                .iter()
                .filter(|p| cluster.keys_on(**p) > 0)
                .count()
                >= 2,
            "the tenants' keys are spread over the nodes"
        );
    }

    /// Requests queued behind a call to a frozen Redis pass their deadline in the queue: each is
    /// answered `Overloaded` at its own deadline, is never sent, and counts nothing after the thaw.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_whose_deadline_passes_in_the_queue_is_never_sent() {
        let redis = support::OwnedRedis::start().await;
        let counter = RedisCounter::connect(&redis.url, None, 1, unique_prefix())
            .await
            .expect("connect to the owned Redis");
        counter.set_command_timeout(Duration::from_millis(300));
        let checks = [check("p:queued", 1, 60_000)];
        let seed = counter
            .check(TENANT, &checks, far_deadline())
            .await
            .expect("Redis answers before the freeze");
        assert_eq!(seed[0].remaining, 9);

        redis.freeze();
        let started = Instant::now();
        let now = tokio::time::Instant::now();
        // The first request takes the one connection and waits on the frozen Redis for 300 ms;
        // the others queue behind it with 50 ms deadlines.
        let first = counter.check(TENANT, &checks, now + Duration::from_millis(300));
        let queued = (0..20).map(|_| async {
            let result = counter
                .check(TENANT, &checks, now + Duration::from_millis(50))
                .await;
            (result, started.elapsed())
        });
        let (first, queued) = tokio::join!(first, futures_util::future::join_all(queued));
        assert!(
            matches!(cause(&first), Some(CounterError::Timeout(_))),
            "{first:?}"
        );
        for (result, answered_after) in &queued {
            assert!(
                matches!(result, Err(CounterError::Overloaded)),
                "{result:?}"
            );
            assert!(
                *answered_after < Duration::from_millis(250),
                "answered at its own deadline, not when the call ahead ended: {answered_after:?}"
            );
        }
        redis.thaw();

        assert_eq!(
            remaining_after_thaw(&counter, "p:queued").await,
            9,
            "nothing of the 21 failed requests counted"
        );
    }

    /// Exactness under load: 4,000 requests, 256 in flight, over two counters (two Sluice
    /// instances) sharing one Redis, at a limit of 1,000.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_instances_under_load_admit_exactly_max() {
        const REQUESTS: usize = 4_000;
        const IN_FLIGHT: usize = 256;
        let prefix = unique_prefix();
        let instances = [
            Arc::new(redis_counter_with_prefix(&prefix).await),
            Arc::new(redis_counter_with_prefix(&prefix).await),
        ];
        let limit = CounterCheck {
            max_requests: 1_000,
            ..check("p:exact-under-load", 1, 60_000)
        };
        let workers: Vec<_> = (0..IN_FLIGHT)
            .map(|worker| {
                let instances = instances.clone();
                tokio::spawn(async move {
                    let mut allowed = 0;
                    for request in (worker..REQUESTS).step_by(IN_FLIGHT) {
                        let counter = &instances[request % 2];
                        let verdicts = counter
                            .check(TENANT, &[limit], far_deadline())
                            .await
                            .expect("counter check");
                        allowed += usize::from(verdicts[0].allowed);
                    }
                    allowed
                })
            })
            .collect();
        let mut allowed = 0;
        for worker in workers {
            allowed += worker.await.expect("worker");
        }
        assert_eq!(allowed, 1_000);
        let probe = instances[0]
            .check(TENANT, &[CounterCheck { hits: 0, ..limit }], far_deadline())
            .await
            .expect("probe");
        assert_eq!(probe[0].remaining, 0);
    }

    #[tokio::test]
    async fn prefix_with_braces_is_refused() {
        let result = RedisCounter::connect(&test_redis_url().await, None, 1, "bad{prefix}:").await;
        assert!(matches!(result, Err(CounterError::Config(_))), "{result:?}");
    }
}

/// Many requests in flight at once: the Redis counter decides them in shared script calls, and
/// both counters must answer exactly as if each request were decided alone, in arrival order.
/// `join_all` polls the requests in order, so they reach the counter in that order; the Redis
/// counter has one connection here, so every call after the first carries everything queued
/// meanwhile, in order.
mod concurrent_requests {
    use futures_util::future::join_all;

    use super::*;

    fn check(key_suffix: &'static str, max_requests: u32, hits: u32) -> CounterCheck<'static> {
        CounterCheck {
            key_suffix,
            max_requests,
            window_ms: 60_000,
            burst_limit: 0,
            hits,
            enforcing: true,
        }
    }

    /// (allowed, remaining) per check of each request, all sent at once (in order).
    pub(super) async fn decide_together(
        counter: &dyn SlidingWindowCounter,
        requests: &[Vec<CounterCheck<'static>>],
    ) -> Vec<Vec<(bool, u32)>> {
        join_all(
            requests
                .iter()
                .map(|checks| counter.check(TENANT, checks, far_deadline())),
        )
        .await
        .into_iter()
        .map(|verdicts| {
            verdicts
                .expect("counter check")
                .iter()
                .map(|v| (v.allowed, v.remaining))
                .collect()
        })
        .collect()
    }

    async fn keep_each_requests_semantics_in_arrival_order(counter: Arc<dyn SlidingWindowCounter>) {
        let a = |hits| check("p:a", 5, hits);
        let b = |hits| check("p:b", 3, hits);
        let burst = CounterCheck {
            burst_limit: 2,
            ..check("p:c", 10, 1)
        };
        let d = |hits| check("p:d", 5, hits);
        let shadow_a = CounterCheck {
            enforcing: false,
            ..a(1)
        };
        let requests = vec![
            vec![a(1), b(1)],
            vec![a(1)],
            vec![a(1), b(2)],
            vec![a(1), b(1)], // b is full: all or nothing, a records nothing either
            vec![a(2)],       // weights: the two hits a still has
            vec![shadow_a, b(0)], // a shadow over its limit never blocks
            vec![burst],
            vec![burst],
            vec![burst],      // a third hit within one second is over the burst limit
            vec![d(2), d(2)], // a key named twice counts both
            vec![d(1), d(1)], // the second naming does not fit: nothing recorded
            vec![d(1)],
            vec![a(0), b(0)],
        ];
        let expected = vec![
            vec![(true, 4), (true, 2)],
            vec![(true, 3)],
            vec![(true, 2), (true, 0)],
            vec![(true, 2), (false, 0)],
            vec![(true, 0)],
            vec![(false, 0), (true, 0)],
            vec![(true, 1)],
            vec![(true, 0)],
            vec![(false, 0)],
            vec![(true, 1), (true, 1)],
            vec![(true, 1), (false, 1)],
            vec![(true, 0)],
            vec![(true, 0), (true, 0)],
        ];
        assert_eq!(decide_together(&*counter, &requests).await, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory() {
        keep_each_requests_semantics_in_arrival_order(crate::memory_counter().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis() {
        let url = test_redis_url().await;
        let counter = RedisCounter::connect(&url, None, 1, unique_prefix())
            .await
            .expect("connect to the test Redis");
        keep_each_requests_semantics_in_arrival_order(Arc::new(counter)).await;
    }
}

/// Random batches — runs of identical requests (the groups the script decides in one step)
/// mixed with others that share their counters, shadow checks, weights, a burst limit, a
/// counter named twice — decided together by Redis and one by one by the in-process counter:
/// every verdict's `allowed` and `remaining` agree.
mod random_batches {
    use proptest::prelude::*;

    use super::{concurrent_requests::decide_together, *};

    /// (key, max_requests, burst_limit): three counters of one tenant.
    const COUNTERS: [(&str, u32, u32); 3] = [("p:a", 6, 0), ("p:b", 9, 0), ("p:c", 12, 3)];

    fn check() -> impl Strategy<Value = CounterCheck<'static>> {
        (0..COUNTERS.len(), 0..4u32, prop::bool::weighted(0.8)).prop_map(
            |(counter, hits, enforcing)| {
                let (key_suffix, max_requests, burst_limit) = COUNTERS[counter];
                CounterCheck {
                    key_suffix,
                    max_requests,
                    window_ms: 60_000,
                    burst_limit,
                    hits,
                    enforcing,
                }
            },
        )
    }

    /// Runs of 1 to 6 identical requests of 1 to 3 checks each.
    fn batch() -> impl Strategy<Value = Vec<Vec<CounterCheck<'static>>>> {
        prop::collection::vec((prop::collection::vec(check(), 1..=3), 1..=6usize), 1..12).prop_map(
            |runs| {
                runs.into_iter()
                    .flat_map(|(request, times)| std::iter::repeat_n(request, times))
                    .collect()
            },
        )
    }

    #[test]
    fn decide_as_the_in_process_counter_does() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let url = runtime.block_on(test_redis_url());
        let config = ProptestConfig {
            cases: 48,
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        proptest!(config, |(requests in batch())| {
            let (redis, memory) = runtime.block_on(async {
                // One connection: after the first request, every request waits for the call
                // in flight and goes in the next one, in arrival order.
                let redis = RedisCounter::connect(&url, None, 1, unique_prefix())
                    .await
                    .expect("connect to the test Redis");
                let memory = InMemoryCounter::new(10_000);
                (
                    decide_together(&redis, &requests).await,
                    decide_together(&memory, &requests).await,
                )
            });
            prop_assert_eq!(redis, memory);
        });
    }
}

/// Two tenants whose checks name the same key suffix keep separate counts: the in-process twin of
/// the `{tenant}` hash tag. Run against both counters, like `cases`.
mod tenants_sharing_a_key_suffix {
    use super::*;

    const SHARED: CounterCheck<'static> = CounterCheck {
        key_suffix: "p:same-policy-id",
        max_requests: 2,
        window_ms: 60_000,
        burst_limit: 0,
        hits: 1,
        enforcing: true,
    };

    async fn verdict(
        counter: &dyn SlidingWindowCounter,
        tenant: &str,
        check: CounterCheck<'_>,
    ) -> CounterVerdict {
        counter
            .check(tenant, &[check], far_deadline())
            .await
            .expect("counter check")[0]
    }

    async fn keep_separate_counts(counter: Arc<dyn SlidingWindowCounter>) {
        for remaining in [1, 0] {
            let acme = verdict(&*counter, "acme", SHARED).await;
            assert!(acme.allowed);
            assert_eq!(acme.remaining, remaining);
        }
        assert!(!verdict(&*counter, "acme", SHARED).await.allowed);

        // globex's counter is untouched by acme's hits, and acme's by globex's.
        for remaining in [1, 0] {
            let globex = verdict(&*counter, "globex", SHARED).await;
            assert!(globex.allowed, "globex is not limited by acme's count");
            assert_eq!(globex.remaining, remaining);
        }
        assert!(!verdict(&*counter, "globex", SHARED).await.allowed);
        let probe = CounterCheck { hits: 0, ..SHARED };
        assert_eq!(verdict(&*counter, "acme", probe).await.remaining, 0);
        assert_eq!(verdict(&*counter, "initech", probe).await.remaining, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory() {
        keep_separate_counts(crate::memory_counter().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis() {
        keep_separate_counts(crate::redis_counter().await).await;
    }
}
