//! Group commit for [`super::RedisCounter`]: the queue of checks waiting for a script call, the
//! batch call itself (`sliding_window.lua` deciding many requests in one `EVALSHA`), its ARGV
//! encoding and the decoding of its reply back into one answer per request.
//!
//! # How a check reaches Redis
//! A check joins the queue of its hash slot (one queue on a standalone Redis, where a call may mix
//! tenants; one per slot on Redis Cluster, where a call may only hold keys of one slot). When no
//! call of that queue is in flight, the check goes at once — alone, if nothing else waits: there
//! is no timer and no added latency. Otherwise it waits; when the call returns, its driver takes
//! everything queued meanwhile (at most [`MAX_BATCH_REQUESTS`] requests and [`MAX_BATCH_CHECKS`]
//! checks) as the next call. Busy periods therefore turn into bigger calls, not longer queues:
//! Redis pays per key and per call, not per request. A queue opens a further call (up to
//! [`GroupCommit::max_in_flight`], one per pooled connection) only while a full batch waits or its
//! oldest request has waited past [`STALLED_AFTER`], so calls stay as full as the load allows,
//! throughput never serialises on one round trip, and a slow call does not hold the queue up.
//!
//! # Deadlines stay per request
//! Each request carries its own `not_after` on Redis's clock into the batch, and the script skips
//! only the late ones. A request whose deadline passes while it still waits in the queue is
//! answered [`CounterError::Overloaded`] at once and is never sent, so it records nothing; one
//! already sent that gets no answer by its deadline is [`CounterError::Timeout`]. Whether a request
//! was sent is settled by one atomic claim, taken either by the driver (sent) or by the waiter
//! giving up (never sent), never both.
//!
//! Calls are sent from spawned driver tasks, so a caller that gives up (or whose RPC is cancelled)
//! never cancels a call that carries other requests.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use fred::clients::Client;
use fred::error::Error;
use fred::prelude::{ClientLike, ErrorKind, Pool};
use fred::types::Value;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::telemetry::RedisCallSeries;

use super::{
    CounterError, CounterVerdict,
    batch::{Plan, RequestChecks},
    cluster_nodes::ClusterNodes,
    redis::classify,
    redis_clock::RedisClock,
};

/// Most requests one script call decides. With a handful of keys per request, deciding 256 costs
/// Redis well under a millisecond, so no call holds Redis up for long.
pub const MAX_BATCH_REQUESTS: usize = 256;
/// Most checks (descriptors) one script call carries, the byte budget of a call: each check is
/// one key of about 60 bytes and six integers. A request has at most 64 descriptors, so one
/// request always fits.
pub const MAX_BATCH_CHECKS: usize = 1_024;

/// How long the oldest queued request may wait before its queue opens a further call: far above
/// a healthy call's round trip (well under a millisecond), far below the 50 ms default deadline.
const STALLED_AFTER: Duration = Duration::from_millis(2);

/// The Redis Cluster hash slots, one queue each.
const CLUSTER_SLOTS: usize = 16_384;

/// One request's checks of one tenant, waiting for a call.
struct QueuedRequest {
    checks: RequestChecks,
    /// When it joined the queue.
    queued_at: Instant,
    /// Taken by whoever decides the request's fate first: the driver sending it, or the waiter
    /// giving up on it.
    claim: Arc<Claim>,
    reply: oneshot::Sender<Result<Vec<CounterVerdict>, CounterError>>,
}

/// Set once, by the first of the driver (to the number of the call that sends the request) and
/// the waiter (to [`Claim::ABANDONED`]).
#[derive(Debug, Default)]
struct Claim(AtomicU64);

impl Claim {
    const FREE: u64 = 0;
    const ABANDONED: u64 = 1;

    /// Whether the driver took the claim for `call` (it was still free).
    fn send_in(&self, call: u64) -> bool {
        self.0
            .compare_exchange(Self::FREE, call, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// `None` when the waiter took the claim (the request will never be sent), else the number of
    /// the call that sent it.
    fn abandon(&self) -> Option<u64> {
        self.0
            .compare_exchange(
                Self::FREE,
                Self::ABANDONED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .err()
    }
}

/// Takes the claim when the waiting check is dropped (deadline, or its RPC cancelled), so a
/// request nobody waits for any more is never sent.
struct AbandonUnsent<'a>(&'a Claim);

impl Drop for AbandonUnsent<'_> {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// One queue of requests whose keys may share a call.
#[derive(Default)]
struct SlotQueue(Mutex<QueueState>);

#[derive(Default)]
struct QueueState {
    waiting: VecDeque<QueuedRequest>,
    /// The checks of `waiting`, summed.
    waiting_checks: usize,
    /// Calls of this queue in flight. While requests wait, at least one is, and its driver will
    /// take them when its call returns.
    in_flight: usize,
}

impl QueueState {
    /// Whether a request just queued (at `now`) should start a call of its own: when none is in
    /// flight; or, while a connection is free, when a full batch waits or the oldest request has
    /// waited longer than [`STALLED_AFTER`] — the call in flight is slow (Redis or this process
    /// starved of CPU), and a second call lets Redis work on it while the first one's answer
    /// waits to be read.
    fn may_start_call(&self, max_in_flight: usize, now: Instant) -> bool {
        self.in_flight == 0
            || (self.in_flight < max_in_flight
                && (self.waiting.len() >= MAX_BATCH_REQUESTS
                    || self.waiting_checks >= MAX_BATCH_CHECKS
                    || self
                        .waiting
                        .front()
                        .is_some_and(|oldest| now - oldest.queued_at > STALLED_AFTER)))
    }
}

impl SlotQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // The critical sections only move requests between containers; a panic cannot leave
        // the state half-updated in a way that matters more than stopping would.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The queues and the batch call of one [`super::RedisCounter`].
pub(super) struct GroupCommit {
    pool: Pool,
    /// Redis Cluster: a pool per primary, chosen by slot, so one failing node stalls only the
    /// calls for its own slots.
    nodes: Option<Arc<ClusterNodes>>,
    /// Holds the Lua source and its SHA-1, so `NOSCRIPT` (after a restart or failover) reloads it.
    script: Script,
    /// Where a request's deadline falls on Redis's clock, so a late one records nothing.
    clock: RedisClock,
    /// Redis Cluster: a queue (and a clock) per hash slot.
    clustered: bool,
    queues: Box<[SlotQueue]>,
    /// Calls in flight per queue, at most: one per pooled connection. Beyond the first, a call
    /// starts only with a full batch.
    max_in_flight: usize,
    /// The last call number handed out; numbers start above [`Claim::ABANDONED`].
    last_call: AtomicU64,
    /// Where each call's duration and size are observed, once given.
    calls: OnceLock<RedisCallSeries>,
}

impl GroupCommit {
    pub(super) fn new(pool: Pool, script: Script, nodes: Option<Arc<ClusterNodes>>) -> Self {
        let clustered = pool.next().is_clustered();
        let queues = if clustered { CLUSTER_SLOTS } else { 1 };
        Self {
            max_in_flight: pool.size().max(1),
            pool,
            nodes,
            script,
            clock: RedisClock::new(clustered),
            clustered,
            queues: (0..queues).map(|_| SlotQueue::default()).collect(),
            last_call: AtomicU64::new(Claim::ABANDONED),
            calls: OnceLock::new(),
        }
    }

    pub(super) fn report_calls_to(&self, series: RedisCallSeries) {
        // The first series given stays; a second call changes nothing.
        let _ = self.calls.set(series);
    }

    /// The hash slot of a call whose first key is `key` (every key of one tenant shares it); 0 on
    /// a standalone Redis, where every call shares one queue.
    pub(super) fn slot_of(&self, key: &str) -> u16 {
        if self.clustered {
            fred::util::redis_keyslot(key.as_bytes())
        } else {
            0
        }
    }

    /// Decides one request's checks (`keys` and [`super::batch::LIMITS_PER_CHECK`] `limits` per check) in the
    /// next call of `slot`'s queue; see the module doc for what `deadline` guarantees.
    pub(super) async fn check(
        self: &Arc<Self>,
        slot: u16,
        keys: Vec<String>,
        limits: Vec<i64>,
        deadline: Instant,
    ) -> Result<Vec<CounterVerdict>, CounterError> {
        let (reply, answer) = oneshot::channel();
        let claim = Arc::new(Claim::default());
        let _unsent = AbandonUnsent(&claim);
        self.enqueue(
            slot,
            QueuedRequest {
                checks: RequestChecks {
                    keys,
                    limits,
                    not_after_us: self.clock.not_after_us(slot, deadline),
                },
                queued_at: Instant::now(),
                claim: Arc::clone(&claim),
                reply,
            },
        );
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(outcome)) => outcome,
            // The driver was dropped with the runtime (shutdown).
            Ok(Err(_)) => Err(CounterError::Connection(Error::new(
                ErrorKind::Canceled,
                "the call carrying this check was dropped",
            ))),
            Err(_) => match claim.abandon() {
                None => Err(CounterError::Overloaded),
                Some(call) => Err(CounterError::in_call(
                    call,
                    CounterError::Timeout(Error::new(
                        ErrorKind::Timeout,
                        "Redis did not answer the call by the deadline",
                    )),
                )),
            },
        }
    }

    fn queue(&self, slot: u16) -> &SlotQueue {
        &self.queues[if self.clustered { usize::from(slot) } else { 0 }]
    }

    /// Queues `request`; when a call may start, starts one with everything queued.
    fn enqueue(self: &Arc<Self>, slot: u16, request: QueuedRequest) {
        let batch = {
            let mut state = self.queue(slot).lock();
            let now = request.queued_at;
            state.waiting_checks += request.checks.keys.len();
            state.waiting.push_back(request);
            if !state.may_start_call(self.max_in_flight, now) {
                return;
            }
            state.in_flight += 1;
            take_batch(&mut state, self.next_call())
        };
        tokio::spawn(Arc::clone(self).drive(slot, batch));
    }

    /// Sends `batch`, then whatever queued meanwhile, until the queue is empty; then frees its
    /// place among the calls in flight. Checking for more and freeing the place happen under one
    /// lock, so a request queued meanwhile is never left without a driver.
    async fn drive(self: Arc<Self>, slot: u16, mut batch: Vec<QueuedRequest>) {
        loop {
            if !batch.is_empty() {
                self.call(slot, batch).await;
            }
            let mut state = self.queue(slot).lock();
            if state.waiting.is_empty() {
                state.in_flight -= 1;
                return;
            }
            batch = take_batch(&mut state, self.next_call());
        }
    }

    /// The script call on the node an `ASK` reply names, for a slot being migrated there:
    /// `ASKING` and `EVALSHA` as one pipeline on one connection, since `ASKING` holds for the
    /// next command only. A target that lacks the script gets it loaded, then the pair again.
    async fn asking_evalsha(
        &self,
        target: &Client,
        slot: u16,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Vec<Value>, Error> {
        // Routed by the slot: when `target` is the cluster client (a target not in the table
        // yet), both commands must go to the slot's node, never by hashing the SHA.
        let attempt = |keys: Vec<String>, args: Vec<Value>| async move {
            let route = ClusterHash::Custom(slot);
            let pipeline = target.pipeline();
            let asking = CustomCommand::new_static("ASKING", route.clone(), false);
            let () = pipeline.custom(asking, Vec::<Value>::new()).await?;
            // EVALSHA sha numkeys key… arg…, spelled out: a pipeline has no Lua helpers.
            let mut evalsha: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
            evalsha.push(Value::String(self.script.sha1().clone()));
            evalsha.push(Value::Integer(keys.len() as i64));
            evalsha.extend(keys.into_iter().map(|key| Value::String(key.into())));
            evalsha.extend(args);
            let command = CustomCommand::new_static("EVALSHA", route, false);
            let () = pipeline.custom(command, evalsha).await?;
            let mut replies = pipeline.try_all::<Value>().await.into_iter();
            replies
                .nth(1)
                .unwrap_or_else(|| Err(Error::new(ErrorKind::Protocol, "no reply to EVALSHA")))?
                .convert()
        };
        match attempt(keys.clone(), args.clone()).await {
            Err(err) if err.details().starts_with("NOSCRIPT") => {
                self.script.load(target).await?;
                attempt(keys, args).await
            }
            reply => reply,
        }
    }

    fn next_call(&self) -> u64 {
        self.last_call.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// One `EVALSHA` deciding every request of `batch`, and each request's answer. A failure of
    /// the call is one failure, shared by every request it carried ([`CounterError::InCall`]).
    async fn call(&self, slot: u16, batch: Vec<QueuedRequest>) {
        let Some(call) = batch.first().map(|r| r.claim.0.load(Ordering::Acquire)) else {
            return;
        };
        let mut plan = Plan::new(batch.iter().map(|request| &request.checks));
        let (keys, args) = plan.take_call();
        let sent = Instant::now();
        let reply: Result<Vec<Value>, Error> = match &self.nodes {
            Some(nodes) => {
                let client = nodes.client_for(slot);
                let reply = self
                    .script
                    .evalsha_with_reload(&client, keys.clone(), args.clone())
                    .await;
                match reply {
                    Err(err) if is_redirection(&err) => {
                        // The slot moved or is moving (a failover, a resharding) and nothing ran:
                        // learn the new topology, and send the call once more where Redis says.
                        nodes.refresh_soon();
                        match redirection(&err) {
                            Some(Redirection::Moved(node)) => {
                                let owner = nodes.client_named(node);
                                self.script.evalsha_with_reload(&owner, keys, args).await
                            }
                            Some(Redirection::Ask(node)) => {
                                let target = nodes.client_named(node);
                                self.asking_evalsha(&target, slot, keys, args).await
                            }
                            None => Err(err),
                        }
                    }
                    reply => reply,
                }
            }
            None => {
                self.script
                    .evalsha_with_reload(self.pool.next_connected(), keys, args)
                    .await
            }
        };
        let received = Instant::now();
        if let Some(series) = self.calls.get() {
            series
                .duration
                .observe(received.duration_since(sent).as_secs_f64());
            series.batch_requests.observe(batch.len() as f64);
        }
        let outcomes = match reply {
            Ok(reply) => plan.outcomes(&reply),
            Err(err) if is_redirection(&err) => Err(CounterError::Redirected(err)),
            Err(err) => Err(classify(err)),
        };
        let outcomes = match outcomes {
            Ok(outcomes) => outcomes,
            Err(error) => {
                let error = CounterError::in_call(call, error);
                for request in batch {
                    let _ = request.reply.send(Err(error.clone()));
                }
                return;
            }
        };
        self.clock.observe(slot, outcomes.redis_now_us, received);
        for (request, outcome) in batch.into_iter().zip(outcomes.per_request) {
            // Late requests of one call were late together (a frozen or slow Redis): one failure.
            let outcome = outcome.map_err(|error| CounterError::in_call(call, error));
            // The waiter may have given up at its deadline meanwhile; nobody to tell then.
            let _ = request.reply.send(outcome);
        }
    }
}

/// Whether Redis Cluster refused a call because its slot is not (or not only) on the node asked:
/// `MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`. The script did not run.
fn is_redirection(error: &Error) -> bool {
    let details = error.details();
    ["MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"]
        .iter()
        .any(|code| details.starts_with(code))
        || *error.kind() == ErrorKind::Cluster
}

/// Where Redis Cluster sent a call that did not run.
#[derive(Debug, PartialEq, Eq)]
enum Redirection<'a> {
    /// `MOVED <slot> <host:port>`: the slot lives there now.
    Moved(&'a str),
    /// `ASK <slot> <host:port>`: the slot is being migrated there; ask it, with `ASKING`.
    Ask(&'a str),
}

/// The redirection a reply names; `None` for `TRYAGAIN`, `CLUSTERDOWN` and other errors, which a
/// second try at once would not change.
fn redirection(error: &Error) -> Option<Redirection<'_>> {
    let mut parts = error.details().split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some("MOVED"), Some(_slot), Some(node)) => Some(Redirection::Moved(node)),
        (Some("ASK"), Some(_slot), Some(node)) => Some(Redirection::Ask(node)),
        _ => None,
    }
}

/// The requests of call number `call` from the front of the queue, within the bounds, skipping
/// (and dropping) requests whose waiter gave up.
fn take_batch(state: &mut QueueState, call: u64) -> Vec<QueuedRequest> {
    let mut batch = Vec::with_capacity(state.waiting.len().min(MAX_BATCH_REQUESTS));
    let mut checks = 0;
    while let Some(next) = state.waiting.front() {
        if batch.len() == MAX_BATCH_REQUESTS
            || (!batch.is_empty() && checks + next.checks.keys.len() > MAX_BATCH_CHECKS)
        {
            break;
        }
        let Some(next) = state.waiting.pop_front() else {
            break;
        };
        state.waiting_checks -= next.checks.keys.len();
        if next.claim.send_in(call) {
            checks += next.checks.keys.len();
            batch.push(next);
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_and_ask_replies_say_where_to_send_the_call_again() {
        let moved = Error::new(ErrorKind::Cluster, "MOVED 3999 127.0.0.1:6381");
        assert!(is_redirection(&moved));
        assert_eq!(
            redirection(&moved),
            Some(Redirection::Moved("127.0.0.1:6381"))
        );
        let ask = Error::new(ErrorKind::Cluster, "ASK 3999 127.0.0.1:6381");
        assert!(is_redirection(&ask));
        assert_eq!(redirection(&ask), Some(Redirection::Ask("127.0.0.1:6381")));
        let try_again = Error::new(
            ErrorKind::Unknown,
            "TRYAGAIN Multiple keys request during rehashing",
        );
        assert!(is_redirection(&try_again));
        assert_eq!(redirection(&try_again), None);
        let other = Error::new(ErrorKind::Unknown, "ERR something else");
        assert!(!is_redirection(&other));
        assert_eq!(redirection(&other), None);
    }

    fn queued(keys: &[&str], not_after_us: i64) -> (QueuedRequest, Arc<Claim>) {
        let claim = Arc::new(Claim::default());
        let (reply, _) = oneshot::channel();
        let request = QueuedRequest {
            checks: RequestChecks {
                keys: keys.iter().map(|k| (*k).to_owned()).collect(),
                limits: keys
                    .iter()
                    .enumerate()
                    .flat_map(|(i, _)| [10, 1_000, 0, i as i64 + 1, 1])
                    .collect(),
                not_after_us,
            },
            queued_at: Instant::now(),
            claim: Arc::clone(&claim),
            reply,
        };
        (request, claim)
    }

    #[test]
    fn a_batch_is_bounded_and_skips_requests_whose_waiter_gave_up() {
        let mut state = QueueState::default();
        let (gone, claim) = queued(&["k"], 0);
        assert_eq!(claim.abandon(), None, "the waiter gave up first");
        let push = |state: &mut QueueState, request: QueuedRequest| {
            state.waiting_checks += request.checks.keys.len();
            state.waiting.push_back(request);
        };
        push(&mut state, gone);
        for _ in 0..MAX_BATCH_REQUESTS + 10 {
            push(&mut state, queued(&["k"], 0).0);
        }
        let batch = take_batch(&mut state, 7);
        assert_eq!(batch.len(), MAX_BATCH_REQUESTS);
        assert_eq!(state.waiting.len(), 10, "the rest waits for the next call");
        assert_eq!(state.waiting_checks, 10);
        assert!(
            batch.iter().all(|r| r.claim.abandon() == Some(7)),
            "every request sent is claimed as sent, in call 7"
        );

        let wide: Vec<String> = (0..64).map(|i| format!("k{i}")).collect();
        let wide: Vec<&str> = wide.iter().map(String::as_str).collect();
        let mut state = QueueState::default();
        for _ in 0..20 {
            push(&mut state, queued(&wide, 0).0);
        }
        assert_eq!(take_batch(&mut state, 8).len(), MAX_BATCH_CHECKS / 64);
        assert_eq!(state.waiting_checks, (20 - MAX_BATCH_CHECKS / 64) * 64);
    }

    #[test]
    fn a_further_call_starts_only_for_a_full_batch_or_a_stalled_queue() {
        let now = Instant::now();
        let mut state = QueueState::default();
        assert!(
            state.may_start_call(4, now),
            "nothing in flight: go at once"
        );
        state.in_flight = 1;
        for _ in 0..MAX_BATCH_REQUESTS - 1 {
            state.waiting.push_back(queued(&["k"], 0).0);
        }
        assert!(!state.may_start_call(4, now), "wait for the call in flight");
        assert!(
            state.may_start_call(4, now + STALLED_AFTER * 2),
            "the oldest waited too long: the call in flight is slow"
        );
        state.waiting.push_back(queued(&["k"], 0).0);
        assert!(state.may_start_call(4, now), "a full batch waits");
        state.in_flight = 4;
        assert!(!state.may_start_call(4, now), "every connection is busy");
        assert!(!state.may_start_call(4, now + STALLED_AFTER * 2));
        let mut wide = QueueState {
            in_flight: 1,
            waiting_checks: MAX_BATCH_CHECKS,
            ..QueueState::default()
        };
        wide.waiting.push_back(queued(&["k"], 0).0);
        assert!(wide.may_start_call(2, now), "a full batch by checks");
    }
}
