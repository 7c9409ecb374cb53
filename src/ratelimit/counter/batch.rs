//! One script call's worth of requests: the arguments of `sliding_window.lua` for a batch, and
//! every request's verdicts from its reply. The layout of both is in the script's header.
//!
//! # Groups
//! Requests with identical checks (the same counters, limits and hits — one hot tenant's traffic)
//! travel as one group: their checks once, then one deadline each, and the script decides a group
//! whose checks all enforce in one step, however many requests it holds. A request joins the
//! group of an earlier identical one only when no group created since shares a counter with it,
//! so deciding the groups in order is deciding the requests in arrival order: the requests it
//! moves past cannot see or change its counters.
//!
//! # Verdicts
//! The script decides what is allowed and records it; it returns, besides each group's decisions,
//! the counters as they stood before the batch (per window: hits and the oldest hit; per key: the
//! last second's hits and the score it wrote at). `remaining` and `reset_after_ms` of every check
//! follow from those and the decisions, so they are computed here, once per request, instead of
//! in Redis's single thread.

use std::collections::HashMap;
use std::fmt::Write as _;

use fred::types::Value;

use super::{CounterError, CounterVerdict};

/// Digits of one deadline in a group's deadline string.
const DEADLINE_DIGITS: usize = 16;
/// A request's deadline in the script's terms: "no bound" (0) sorts last, as the largest value
/// the digits hold; a request is late when Redis's time is above it.
const NO_DEADLINE: i64 = 9_999_999_999_999_999;

fn deadline(not_after_us: i64) -> i64 {
    if not_after_us == 0 {
        NO_DEADLINE
    } else {
        not_after_us.clamp(1, NO_DEADLINE)
    }
}

/// Limit values per check that a request carries: max_requests, window_ms, burst_limit, hits,
/// enforcing.
pub(super) const LIMITS_PER_CHECK: usize = 5;

/// One request's checks, as the Redis counter queues them.
#[derive(Debug)]
pub(super) struct RequestChecks {
    /// One full key per check, in check order (a key may repeat).
    pub(super) keys: Vec<String>,
    /// [`LIMITS_PER_CHECK`] values per check, in check order.
    pub(super) limits: Vec<i64>,
    /// The request's deadline on Redis's clock (0 = no bound).
    pub(super) not_after_us: i64,
}

/// One check as the script takes it, its counter named by window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CheckSpec {
    /// Index into [`Plan::windows`].
    window: usize,
    max: i64,
    burst: i64,
    hits: i64,
    enforcing: bool,
}

/// A counter as read with one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct WindowSpec {
    /// Index into [`Plan::keys`].
    key: usize,
    window_ms: i64,
}

#[derive(Debug)]
struct Group {
    checks: Vec<CheckSpec>,
    /// Positions in the batch, in arrival order.
    members: Vec<usize>,
}

impl Group {
    fn all_enforcing(&self) -> bool {
        self.checks.iter().all(|c| c.enforcing)
    }
}

/// The script call for one batch: `KEYS`, `ARGV`, and what it takes to read the reply.
#[derive(Debug)]
pub(super) struct Plan {
    keys: Vec<String>,
    args: Vec<Value>,
    key_count: usize,
    windows: Vec<WindowSpec>,
    groups: Vec<Group>,
    /// Per batch position: its deadline on Redis's clock.
    not_after_us: Vec<i64>,
}

/// Every request's answer, in batch order, and Redis's time when it decided them.
#[derive(Debug)]
pub(super) struct Outcomes {
    pub(super) redis_now_us: i64,
    pub(super) per_request: Vec<Result<Vec<CounterVerdict>, CounterError>>,
}

impl Plan {
    /// Plans one call deciding `requests` (in arrival order).
    pub(super) fn new<'a>(requests: impl ExactSizeIterator<Item = &'a RequestChecks>) -> Self {
        let mut keys: Vec<String> = Vec::new();
        let mut key_index: HashMap<&str, usize> = HashMap::new();
        let mut windows: Vec<WindowSpec> = Vec::new();
        let mut window_index: HashMap<WindowSpec, usize> = HashMap::new();
        let mut wants_burst: Vec<bool> = Vec::new();
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of_shape: HashMap<Vec<CheckSpec>, usize> = HashMap::new();
        // Per key: the last group that names it.
        let mut last_group_of_key: Vec<usize> = Vec::new();
        let mut not_after_us = Vec::with_capacity(requests.len());

        for (position, request) in requests.enumerate() {
            not_after_us.push(request.not_after_us);
            let mut shape = Vec::with_capacity(request.keys.len());
            for (key, limits) in request
                .keys
                .iter()
                .zip(request.limits.chunks_exact(LIMITS_PER_CHECK))
            {
                let key = *key_index.entry(key.as_str()).or_insert_with(|| {
                    keys.push(key.clone());
                    last_group_of_key.push(usize::MAX);
                    keys.len() - 1
                });
                let [max, window_ms, burst, hits, enforcing] =
                    [limits[0], limits[1], limits[2], limits[3], limits[4]];
                let spec = WindowSpec { key, window_ms };
                let window = *window_index.entry(spec).or_insert_with(|| {
                    windows.push(spec);
                    wants_burst.push(false);
                    windows.len() - 1
                });
                wants_burst[window] |= burst > 0;
                shape.push(CheckSpec {
                    window,
                    max,
                    burst,
                    hits,
                    enforcing: enforcing != 0,
                });
            }
            let joinable = group_of_shape.get(&shape).copied().filter(|&g| {
                shape
                    .iter()
                    .all(|c| last_group_of_key[windows[c.window].key] == g)
            });
            match joinable {
                Some(g) => groups[g].members.push(position),
                None => {
                    let g = groups.len();
                    for check in &shape {
                        last_group_of_key[windows[check.window].key] = g;
                    }
                    groups.push(Group {
                        checks: shape.clone(),
                        members: vec![position],
                    });
                    group_of_shape.insert(shape, g);
                }
            }
        }

        // Identical requests are interchangeable: each group goes in deadline order, so the
        // script finds its late requests (the first ones) by bisection.
        for group in &mut groups {
            group.members.sort_by_key(|&r| deadline(not_after_us[r]));
        }
        let checks: usize = groups.iter().map(|g| g.checks.len()).sum();
        let mut args: Vec<Value> = Vec::with_capacity(
            2 + 3 * windows.len() + 3 * groups.len() + LIMITS_PER_CHECK * checks,
        );
        let push = |args: &mut Vec<Value>, n: i64| args.push(Value::Integer(n));
        push(&mut args, windows.len() as i64);
        for (window, burst) in windows.iter().zip(&wants_burst) {
            push(&mut args, window.key as i64 + 1);
            push(&mut args, window.window_ms);
            push(&mut args, i64::from(*burst));
        }
        push(&mut args, groups.len() as i64);
        for group in &groups {
            push(&mut args, group.members.len() as i64);
            push(&mut args, group.checks.len() as i64);
            for check in &group.checks {
                push(&mut args, check.window as i64 + 1);
                push(&mut args, check.max);
                push(&mut args, check.burst);
                push(&mut args, check.hits);
                push(&mut args, i64::from(check.enforcing));
            }
            let mut deadlines = String::with_capacity(DEADLINE_DIGITS * group.members.len());
            for &r in &group.members {
                // Cannot fail: writing to a String.
                let _ = write!(deadlines, "{:016}", deadline(not_after_us[r]));
            }
            args.push(Value::String(deadlines.into()));
        }
        Self {
            key_count: keys.len(),
            keys,
            args,
            windows,
            groups,
            not_after_us,
        }
    }

    /// `KEYS` and `ARGV` of the call, taken out of the plan to be sent.
    pub(super) fn take_call(&mut self) -> (Vec<String>, Vec<Value>) {
        (
            std::mem::take(&mut self.keys),
            std::mem::take(&mut self.args),
        )
    }

    /// Every request's verdicts from the script's `reply`. An error means the reply does not fit
    /// the call at all; it befalls every request of the batch.
    pub(super) fn outcomes(&self, reply: &[Value]) -> Result<Outcomes, CounterError> {
        let mut reply = Reply(reply.iter());
        let now = reply.integer("the time")?;
        let mut counted = Vec::with_capacity(self.windows.len());
        let mut oldest = Vec::with_capacity(self.windows.len());
        for _ in &self.windows {
            counted.push(reply.integer("a window's count")?);
            oldest.push(reply.integer("a window's oldest hit")?);
        }
        let mut burst = Vec::with_capacity(self.key_count);
        let mut score = Vec::with_capacity(self.key_count);
        for _ in 0..self.key_count {
            burst.push(reply.integer("a key's last second")?);
            score.push(reply.integer("a key's score")?);
        }
        let counters = Counters {
            now,
            counted,
            oldest,
            burst,
            score,
            added: vec![0; self.key_count],
        };
        let mut replay = Replay {
            plan: self,
            counters,
            per_request: (0..self.not_after_us.len())
                .map(|_| Err(CounterError::Late))
                .collect(),
        };
        for group in &self.groups {
            let allowed = reply.integer("a group's decisions")?;
            let fits = reply.bytes("a group's fits")?;
            replay.group(group, allowed, fits)?;
        }
        if reply.0.next().is_some() {
            return Err(CounterError::UnexpectedReply(
                "more values than the batch has groups".into(),
            ));
        }
        Ok(Outcomes {
            redis_now_us: now,
            per_request: replay.per_request,
        })
    }
}

/// The script's reply, read front to back.
struct Reply<'a>(std::slice::Iter<'a, Value>);

impl<'a> Reply<'a> {
    fn next(&mut self, what: &str) -> Result<&'a Value, CounterError> {
        self.0
            .next()
            .ok_or_else(|| CounterError::UnexpectedReply(format!("the reply ends before {what}")))
    }

    fn integer(&mut self, what: &str) -> Result<i64, CounterError> {
        match self.next(what)? {
            Value::Integer(n) => Ok(*n),
            other => Err(CounterError::UnexpectedReply(format!(
                "{what} is {:?}, not an integer",
                other.kind()
            ))),
        }
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], CounterError> {
        match self.next(what)? {
            Value::String(s) => Ok(s.as_bytes()),
            Value::Bytes(b) => Ok(b),
            Value::Null => Ok(&[]),
            other => Err(CounterError::UnexpectedReply(format!(
                "{what} is {:?}, not a string",
                other.kind()
            ))),
        }
    }
}

/// The counters of the batch: as the script read them, plus what the requests replayed so far
/// added.
struct Counters {
    now: i64,
    /// Per window: hits in it before the batch, and the oldest one's score (-1: none).
    counted: Vec<i64>,
    oldest: Vec<i64>,
    /// Per key: hits in the last second before the batch (-1: not read), and where the batch's
    /// hits are recorded.
    burst: Vec<i64>,
    score: Vec<i64>,
    added: Vec<i64>,
}

struct Replay<'p> {
    plan: &'p Plan,
    counters: Counters,
    per_request: Vec<Result<Vec<CounterVerdict>, CounterError>>,
}

impl Replay<'_> {
    fn is_late(&self, position: usize) -> bool {
        self.counters.now > deadline(self.plan.not_after_us[position])
    }

    /// Replays one group: which of its live requests were allowed, and what each check fit.
    fn group(&mut self, group: &Group, allowed: i64, fits: &[u8]) -> Result<(), CounterError> {
        let n = group.checks.len();
        let live: Vec<usize> = group
            .members
            .iter()
            .copied()
            .filter(|&r| !self.is_late(r))
            .collect();
        let wrong = |what: String| CounterError::UnexpectedReply(what);
        if group.all_enforcing() {
            let allowed = usize::try_from(allowed)
                .ok()
                .filter(|&a| a <= live.len())
                .ok_or_else(|| {
                    wrong(format!(
                        "{allowed} of a group of {} live requests allowed",
                        live.len()
                    ))
                })?;
            let denied_fits = if allowed < live.len() { n } else { 0 };
            if fits.len() != denied_fits {
                return Err(wrong(format!(
                    "{} fit flags for a group's denied requests of {n} checks",
                    fits.len()
                )));
            }
            let all_fit = vec![b'1'; n];
            for (i, &position) in live.iter().enumerate() {
                let flags = if i < allowed { &all_fit[..] } else { fits };
                self.request(group, position, flags)?;
            }
        } else {
            if allowed != -1 || fits.len() != n * live.len() {
                return Err(wrong(format!(
                    "{allowed} and {} fit flags for {} live requests of {n} checks",
                    fits.len(),
                    live.len()
                )));
            }
            for (&position, flags) in live.iter().zip(fits.chunks_exact(n)) {
                self.request(group, position, flags)?;
            }
        }
        Ok(())
    }

    /// One request: records its hits when every enforcing check fit (as the script did), then
    /// describes each check's counter after it.
    fn request(
        &mut self,
        group: &Group,
        position: usize,
        flags: &[u8],
    ) -> Result<(), CounterError> {
        let fit = |c: usize| match flags[c] {
            b'1' => Ok(true),
            b'0' => Ok(false),
            other => Err(CounterError::UnexpectedReply(format!(
                "fit flag {:?}",
                char::from(other)
            ))),
        };
        let mut every_enforcing_fits = true;
        for (c, check) in group.checks.iter().enumerate() {
            if check.enforcing && !fit(c)? {
                every_enforcing_fits = false;
            }
        }
        if every_enforcing_fits {
            for (c, check) in group.checks.iter().enumerate() {
                if fit(c)? {
                    self.counters.added[self.plan.windows[check.window].key] += check.hits;
                }
            }
        }
        let verdicts = group
            .checks
            .iter()
            .enumerate()
            .map(|(c, check)| self.verdict(check, fit(c)?))
            .collect::<Result<Vec<_>, _>>()?;
        self.per_request[position] = Ok(verdicts);
        Ok(())
    }

    /// A check's counter as it stands after the request, exactly as the script's semantics
    /// define `remaining` and `reset_after_ms`.
    fn verdict(&self, check: &CheckSpec, allowed: bool) -> Result<CounterVerdict, CounterError> {
        let c = &self.counters;
        let key = self.plan.windows[check.window].key;
        let window_ms = self.plan.windows[check.window].window_ms;
        let added = c.added[key];
        let mut remaining = (check.max - (c.counted[check.window] + added)).max(0);
        if check.burst > 0 {
            if c.burst[key] < 0 {
                return Err(CounterError::UnexpectedReply(
                    "no last-second count for a check with a burst limit".into(),
                ));
            }
            remaining = remaining.min((check.burst - c.burst[key] - added).max(0));
        }
        let oldest = match c.oldest[check.window] {
            -1 if added > 0 => Some(c.score[key]),
            -1 => None,
            oldest => Some(oldest),
        };
        let reset_after_ms = oldest.map_or(0, |oldest| {
            let left_us = oldest + window_ms * 1000 - c.now;
            if left_us <= 0 {
                0
            } else {
                window_ms.min((left_us + 999) / 1000)
            }
        });
        let out_of_range = || {
            CounterError::UnexpectedReply(format!(
                "remaining {remaining} or reset {reset_after_ms} ms out of range"
            ))
        };
        Ok(CounterVerdict {
            allowed,
            remaining: u32::try_from(remaining).map_err(|_| out_of_range())?,
            reset_after_ms: u64::try_from(reset_after_ms).map_err(|_| out_of_range())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request of one-hit checks on `keys`, each with a limit of 10 in 1 s.
    fn request(keys: &[&str], not_after_us: i64) -> RequestChecks {
        RequestChecks {
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            limits: keys.iter().flat_map(|_| [10, 1_000, 0, 1, 1]).collect(),
            not_after_us,
        }
    }

    fn plan(requests: &[RequestChecks]) -> Plan {
        Plan::new(requests.iter())
    }

    fn members(plan: &Plan) -> Vec<Vec<usize>> {
        plan.groups.iter().map(|g| g.members.clone()).collect()
    }

    fn ints(args: &[Value]) -> Vec<i64> {
        args.iter()
            .map(|v| match v {
                Value::Integer(n) => *n,
                other => panic!("{other:?} is not an integer"),
            })
            .collect()
    }

    #[test]
    fn identical_requests_travel_as_one_group_with_their_deadlines_in_one_string() {
        let mut plan = plan(&[
            request(&["k:a"], 8),
            request(&["k:a"], 0),
            request(&["k:a"], 7),
        ]);
        assert_eq!(
            members(&plan),
            [vec![2, 0, 1]],
            "in deadline order, no bound last"
        );
        let (keys, args) = plan.take_call();
        assert_eq!(keys, ["k:a"]);
        assert_eq!(
            ints(&args[..args.len() - 1]),
            [
                1, // windows
                1, 1_000, 0, // k:a over 1 s, no burst
                1, // groups
                3, 1, // three requests of one check
                1, 10, 0, 1, 1, // window 1, max 10, no burst, one hit, enforcing
            ]
        );
        assert_eq!(
            args.last().and_then(Value::as_str).as_deref(),
            Some("000000000000000700000000000000089999999999999999")
        );
    }

    #[test]
    fn a_request_joins_an_earlier_group_only_past_groups_of_other_counters() {
        // b does not touch a's counter, so the second a may be decided before it; ab does, so
        // the third a must come after ab and starts a group of its own.
        let plan = plan(&[
            request(&["k:a"], 0),
            request(&["k:b"], 0),
            request(&["k:a"], 0),
            request(&["k:a", "k:b"], 0),
            request(&["k:a"], 0),
            request(&["k:b"], 0),
        ]);
        assert_eq!(
            members(&plan),
            [vec![0, 2], vec![1], vec![3], vec![4], vec![5]]
        );
    }

    #[test]
    fn a_key_named_twice_and_a_second_window_get_their_own_entries() {
        let mut checks = request(&["k:a", "k:a", "k:a"], 0);
        checks.limits[6] = 60_000; // the second check reads k:a over 60 s
        checks.limits[12] = 5; // the third has a burst limit
        let mut plan = plan(&[checks]);
        let (keys, args) = plan.take_call();
        assert_eq!(keys, ["k:a"]);
        assert_eq!(
            ints(&args[..7]),
            [2, 1, 1_000, 1, 1, 60_000, 0],
            "two windows on key 1, the first with the burst read"
        );
        assert_eq!(
            ints(&args[7..10]),
            [1, 1, 3],
            "one group of one request of three checks"
        );
    }

    fn int(n: i64) -> Value {
        Value::Integer(n)
    }

    fn text(s: &str) -> Value {
        Value::String(s.into())
    }

    fn verdicts(outcome: &Result<Vec<CounterVerdict>, CounterError>) -> Vec<(bool, u32, u64)> {
        outcome
            .as_ref()
            .expect("decided")
            .iter()
            .map(|v| (v.allowed, v.remaining, v.reset_after_ms))
            .collect()
    }

    #[test]
    fn verdicts_follow_the_groups_decisions_in_order() {
        const NOW: i64 = 10_000_000;
        // Three identical requests (max 10 in 1 s), the second late; 8 hits counted, the oldest
        // 400 ms ago. In deadline order the third (NOW + 1) is the first live one and is
        // allowed; the first (no bound) comes last and is not.
        let plan = plan(&[
            request(&["k:a"], 0),
            request(&["k:a"], NOW - 1),
            request(&["k:a"], NOW + 1),
        ]);
        let reply = [
            int(NOW),
            int(8),
            int(NOW - 400_000), // the window
            int(-1),
            int(NOW), // the key
            int(1),
            text("0"), // one allowed; the rest fit nothing
        ];
        let outcomes = plan.outcomes(&reply).expect("a well-formed reply");
        assert_eq!(outcomes.redis_now_us, NOW);
        assert_eq!(verdicts(&outcomes.per_request[2]), [(true, 1, 600)]);
        assert!(matches!(outcomes.per_request[1], Err(CounterError::Late)));
        assert_eq!(verdicts(&outcomes.per_request[0]), [(false, 1, 600)]);
    }

    #[test]
    fn shadow_groups_carry_a_flag_per_check_per_request() {
        const NOW: i64 = 10_000_000;
        let mut shadow = request(&["k:a", "k:b"], 0);
        shadow.limits[9] = 0; // k:b is shadow
        let plan = plan(&[shadow, request(&["k:c"], 0)]);
        assert_eq!(members(&plan), [vec![0], vec![1]]);
        // Empty counters; k:a fits, the shadow k:b does not (and records nothing); k:c's
        // group is all allowed.
        let reply = [
            int(NOW),
            int(0),
            int(-1),
            int(10),
            int(-1),
            int(0),
            int(-1),
            int(-1),
            int(NOW),
            int(-1),
            int(NOW),
            int(-1),
            int(NOW),
            int(-1),
            text("10"),
            int(1),
            text(""),
        ];
        let outcomes = plan.outcomes(&reply).expect("a well-formed reply");
        assert_eq!(
            verdicts(&outcomes.per_request[0]),
            [(true, 9, 1_000), (false, 0, 0)]
        );
        assert_eq!(verdicts(&outcomes.per_request[1]), [(true, 9, 1_000)]);
    }

    #[test]
    fn a_reply_that_does_not_fit_the_call_is_an_error() {
        const NOW: i64 = 10_000_000;
        let plan = plan(&[request(&["k:a"], 0), request(&["k:a"], 0)]);
        let head = [int(NOW), int(0), int(-1), int(-1), int(NOW)];
        for tail in [
            vec![],                         // ends early
            vec![int(3), text("")],         // more allowed than requests
            vec![int(1), text("")],         // one denied but no flags
            vec![int(1), text("x")],        // a flag that is not 0 or 1
            vec![text("2"), text("")],      // the count as a string
            vec![int(2), text(""), int(0)], // a value too many
        ] {
            let reply: Vec<Value> = head.iter().cloned().chain(tail.clone()).collect();
            assert!(
                matches!(plan.outcomes(&reply), Err(CounterError::UnexpectedReply(_))),
                "{tail:?}"
            );
        }
    }
}
