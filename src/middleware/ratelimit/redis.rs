//! Counters in Redis, shared by every gateway instance, decided in Redis (atomically, on
//! Redis' clock, so instances agree) in batches: concurrent decisions of this instance
//! queue up while one script call is in flight, then go to Redis together in the next
//! one, which decides them in arrival order. A batch is one round trip and one script run
//! for up to [`MAX_BATCH`] decisions, where each decision used to be one of each: under
//! load the gateway's and Redis' CPU per decision drop several times over. The decisions
//! are exactly those of one call per request (nothing is reserved or decided locally), so
//! the limit is never exceeded across instances; a decision waits for at most the batch
//! in flight plus its own, both within the store timeout.

use super::algorithm::{Decision, Params};
use crate::config::RateLimitAlgorithm;
use crate::redis_connection::RedisConnection;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// `KEYS[i]` a key; `ARGV[5i-4..5i]` its policy and demand: kind (`t`oken bucket, `l`eaky
/// bucket, fixed `w`indow), rate, per (µs), burst, and how many requests to admit at most
/// (`n`: the decisions waiting for that key, plus the tokens this instance may reserve).
/// Admits as many of the `n` as the limit allows, in order, and returns {admitted,
/// remaining, reset µs, valid µs} for each key, flattened: `remaining` and `reset` as after
/// the last admission (what a single decision reports), `valid` how long an admission stays
/// good (the window's end for a fixed window; 0 = no end).
///
/// Admitting `n` at once gives exactly what `n` decisions one after the other would: a
/// token bucket hands out its whole tokens, a leaky bucket (GCRA) the slots that fit
/// under its capacity, a window what is left of its count. Each key is read once and
/// written once per call. States are stored as `tostring(x)`, which keeps 14 significant
/// digits, like the single-decision script did.
const BATCH: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function token_bucket(key, rate, per, burst, n)
  local interval = per / rate
  local s = redis.call('HMGET', key, 'tokens', 'last')
  local tokens, last = tonumber(s[1]) or burst, tonumber(s[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - last) / interval)
  local admitted = math.max(0, math.min(n, math.floor(tokens)))
  tokens = tokens - admitted
  local reset = 0
  if tokens < 1 then reset = math.ceil((1 - tokens) * interval) end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'last', tostring(now))
  redis.call('PEXPIRE', key, math.ceil((burst - tokens) * interval / 1000) + 1000)
  return admitted, math.floor(tokens), reset, 0
end

local function leaky_bucket(key, rate, per, burst, n)
  local interval = math.ceil(per / rate)
  local capacity = burst * interval
  local tat = math.max(tonumber(redis.call('GET', key)) or now, now)
  -- Admission j (1-based) sets tat + j * interval, allowed while that is within capacity.
  local admitted = math.max(0, math.min(n, math.floor((capacity - (tat - now)) / interval)))
  if admitted == 0 then return 0, 0, tat + interval - now - capacity, 0 end
  local next = tat + admitted * interval
  redis.call('SET', key, tostring(next), 'PX', math.ceil((next - now) / 1000) + 1000)
  local remaining = math.max(0, math.floor((capacity - (next - now)) / interval))
  return admitted, remaining, math.max(0, next + interval - capacity - now), 0
end

local function fixed_window(key, rate, per, n)
  local start = now - (now % per)
  local window = key .. ':' .. tostring(start)
  local count = tonumber(redis.call('GET', window)) or 0
  local admitted = math.max(0, math.min(n, rate - count))
  if admitted > 0 then
    count = redis.call('INCRBY', window, admitted)
    if count == admitted then redis.call('PEXPIRE', window, math.ceil(per / 1000) + 1000) end
  end
  local remaining = math.max(0, rate - count)
  local reset = 0
  if remaining == 0 then reset = start + per - now end
  return admitted, remaining, reset, start + per - now
end

local out = {}
for i, key in ipairs(KEYS) do
  local at = (i - 1) * 5
  local kind = ARGV[at + 1]
  local rate, per, burst = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
  local n = tonumber(ARGV[at + 5])
  local admitted, remaining, reset, valid
  if kind == 't' then
    admitted, remaining, reset, valid = token_bucket(key, rate, per, burst, n)
  elseif kind == 'l' then
    admitted, remaining, reset, valid = leaky_bucket(key, rate, per, burst, n)
  else
    admitted, remaining, reset, valid = fixed_window(key, rate, per, n)
  end
  local o = (i - 1) * 4
  out[o + 1] = admitted
  out[o + 2] = remaining
  out[o + 3] = reset
  out[o + 4] = valid
end
return out
";

/// The most decisions sent in one script call.
pub(super) const MAX_BATCH: usize = 256;
/// Decisions waiting for the next batch, at most (callers then wait to queue, within
/// their timeout).
const QUEUE: usize = 4096;

pub struct RedisStore {
    /// Connected on first use; after a failed connect, decisions fail fast for a moment.
    connection: Arc<RedisConnection>,
    timeout: Duration,
    /// The batching task's queue, started by the first decision (it needs the runtime);
    /// the task ends when the store is dropped.
    queue: OnceLock<mpsc::Sender<Pending>>,
    /// Script calls made (each one batch), for tests and the bench's arithmetic.
    calls: Arc<AtomicU64>,
}

/// What Redis answered for one decision.
#[derive(Clone, Copy, Debug)]
pub(super) struct Answer {
    pub decision: Decision,
    /// On one decision per key and batch: the admissions Redis gave beyond the decisions
    /// that were waiting, for this instance to spend itself (`reserve:`).
    pub grant: Option<Grant>,
}

/// Admissions taken from Redis ahead of need, and the key's state after them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Grant {
    pub tokens: u64,
    /// Left in Redis for every instance after this batch.
    pub remaining: u64,
    /// When the key had no admission left in Redis: µs until it would have one.
    pub reset_micros: i64,
    /// How long an admission stays good (a fixed window's end); 0 = no end.
    pub valid_micros: i64,
}

/// The demand a decision brings to its batch.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Demand {
    /// The policy's `reserve`: admissions per key this instance may hold, at most.
    pub reserve: u64,
    /// How many it would like now (what the key used of its last grant).
    pub wanted: u64,
}

/// One decision waiting for its batch.
struct Pending {
    key: String,
    params: Params,
    demand: Demand,
    reply: oneshot::Sender<Result<Answer, String>>,
}

fn script() -> &'static redis::Script {
    static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(BATCH))
}

impl RedisStore {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        Ok(Self {
            connection: Arc::new(RedisConnection::new(url, timeout)?),
            timeout,
            queue: OnceLock::new(),
            calls: Arc::default(),
        })
    }

    /// One atomic decision, within the store timeout (queueing included).
    pub(super) async fn decide(
        &self,
        params: &Params,
        key: &str,
        demand: Demand,
    ) -> Result<Answer, String> {
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(QUEUE);
            tokio::spawn(batches(
                self.connection.clone(),
                self.timeout,
                receiver,
                self.calls.clone(),
            ));
            sender
        });
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            key: key.to_string(),
            params: *params,
            demand,
            reply,
        };
        let call = async {
            queue
                .send(pending)
                .await
                .map_err(|_| "rate limit batching stopped".to_string())?;
            answer
                .await
                .map_err(|_| "rate limit batching stopped".to_string())?
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| format!("redis did not answer within {:?}", self.timeout))?
    }

    /// Script calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// The batching task: takes what has queued (at least one decision), decides it in one
/// script call, answers, repeats. Ends when the store (the queue's sender) is gone.
async fn batches(
    connection: Arc<RedisConnection>,
    timeout: Duration,
    mut queue: mpsc::Receiver<Pending>,
    calls: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A caller that gave up (timed out) must not spend a token it will not use.
        batch.retain(|p: &Pending| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        calls.fetch_add(1, Ordering::Relaxed);
        let decided = tokio::time::timeout(timeout, decide_batch(&connection, &batch))
            .await
            .unwrap_or_else(|_| Err(format!("redis did not answer within {timeout:?}")));
        match decided {
            Ok(answers) => {
                for (pending, answer) in batch.drain(..).zip(answers) {
                    let _ = pending.reply.send(Ok(answer));
                }
            }
            Err(reason) => {
                for pending in batch.drain(..) {
                    let _ = pending.reply.send(Err(reason.clone()));
                }
            }
        }
    }
}

/// One script call deciding every decision of `batch`: the decisions of one key go
/// together as one demand, and are answered in their order of arrival.
async fn decide_batch(
    connection: &RedisConnection,
    batch: &[Pending],
) -> Result<Vec<Answer>, String> {
    // Indices in key order (a stable sort keeps each key's arrival order); runs of one
    // key are its group.
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by(|&a, &b| batch[a].key.cmp(&batch[b].key));
    let groups: Vec<&[usize]> = order
        .chunk_by(|&a, &b| batch[a].key == batch[b].key)
        .collect();

    let mut connection = connection.get().await?;
    let mut invocation = script().prepare_invoke();
    for group in &groups {
        let first = &batch[group[0]];
        let p = &first.params;
        let kind = match p.kind {
            RateLimitAlgorithm::TokenBucket => "t",
            RateLimitAlgorithm::LeakyBucket => "l",
            RateLimitAlgorithm::FixedWindow => "w",
        };
        invocation
            .key(&first.key)
            .arg(kind)
            .arg(p.rate)
            .arg(p.per_micros)
            .arg(p.burst)
            .arg(group.len() as u64 + extra(batch, group));
    }
    let flat: Vec<i64> = invocation
        .invoke_async(&mut connection)
        .await
        .map_err(|e| e.to_string())?;
    if flat.len() != 4 * groups.len() {
        return Err(format!(
            "rate limit script answered {} values for {} keys",
            flat.len(),
            groups.len()
        ));
    }

    let unanswered = Answer {
        decision: Decision {
            allowed: false,
            limit: 0,
            remaining: 0,
            reset_micros: 0,
        },
        grant: None,
    };
    let mut answers = vec![unanswered; batch.len()];
    for (group, reply) in groups.iter().zip(flat.chunks_exact(4)) {
        let admitted = reply[0].max(0) as u64;
        let remaining = reply[1].max(0) as u64;
        let reset_micros = reply[2].max(0);
        let valid_micros = reply[3].max(0);
        let p = &batch[group[0]].params;
        let limit = match p.kind {
            RateLimitAlgorithm::FixedWindow => p.rate,
            _ => p.burst,
        };
        for (position, &index) in group.iter().enumerate() {
            let position = position as u64;
            // As if decided one after the other: the i-th admitted sees the admissions
            // after it still in `remaining`.
            let decision = if position < admitted {
                let remaining = remaining + (admitted - 1 - position);
                Decision {
                    allowed: true,
                    limit,
                    remaining,
                    reset_micros: if remaining == 0 { reset_micros } else { 0 },
                }
            } else {
                Decision {
                    allowed: false,
                    limit,
                    remaining: 0,
                    reset_micros,
                }
            };
            answers[index] = Answer {
                decision,
                grant: None,
            };
        }
        let first = &mut answers[group[0]];
        first.grant = Some(Grant {
            tokens: admitted.saturating_sub(group.len() as u64),
            remaining,
            reset_micros,
            valid_micros,
        });
    }
    Ok(answers)
}

/// Admissions a key's group asks beyond its waiting decisions: none unless its policy
/// reserves; then what the key used of its last grant, plus the decisions that queued
/// together (concurrency seen now), up to the policy's `reserve`.
fn extra(batch: &[Pending], group: &[usize]) -> u64 {
    let demand = batch[group[0]].demand;
    if demand.reserve == 0 {
        return 0;
    }
    let wanted = group
        .iter()
        .map(|&i| batch[i].demand.wanted)
        .max()
        .unwrap_or(0);
    (wanted + group.len() as u64 - 1).min(demand.reserve)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::middleware::ratelimit::tests::{ALGORITHMS, URL, require_redis};

    fn fresh_key(name: &str) -> String {
        format!(
            "switchboard:test:{name}:{}:{}",
            std::process::id(),
            fastrand::u64(..)
        )
    }

    /// Many concurrent decisions on one key go to Redis in a few calls and are still
    /// exact: a burst of 30 admits exactly 30 of 200, whatever the batches were.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_decisions_are_batched_and_exact() {
        require_redis();
        let store = Arc::new(RedisStore::new(URL, Duration::from_secs(2)).unwrap());
        for kind in ALGORITHMS {
            let params = Params {
                kind,
                rate: 30,
                per_micros: 60_000_000,
                burst: 30,
            };
            let key = fresh_key(&format!("{kind:?}"));
            let calls_before = store.calls();
            let tasks: Vec<_> = (0..200)
                .map(|_| {
                    let (store, key) = (store.clone(), key.clone());
                    tokio::spawn(async move {
                        store
                            .decide(&params, &key, Demand::default())
                            .await
                            .unwrap()
                            .decision
                    })
                })
                .collect();
            let mut allowed = 0;
            for task in tasks {
                let decision = task.await.unwrap();
                assert_eq!(decision.limit, 30);
                if decision.allowed {
                    allowed += 1;
                } else {
                    assert!(decision.reset_micros > 0, "{kind:?}: {decision:?}");
                }
            }
            assert_eq!(allowed, 30, "{kind:?}");
            let calls = store.calls() - calls_before;
            assert!(
                calls < 200,
                "{kind:?}: {calls} script calls for 200 decisions"
            );
        }
    }

    /// One batch may hold decisions of several policies and keys; each gets its own answer.
    #[tokio::test]
    async fn a_batch_mixes_policies_and_keys() {
        require_redis();
        let store = RedisStore::new(URL, Duration::from_secs(2)).unwrap();
        let one = Params {
            kind: RateLimitAlgorithm::TokenBucket,
            rate: 1,
            per_micros: 60_000_000,
            burst: 1,
        };
        let three = Params {
            kind: RateLimitAlgorithm::FixedWindow,
            rate: 3,
            per_micros: 60_000_000,
            burst: 3,
        };
        let (a, b) = (fresh_key("a"), fresh_key("b"));
        let none = Demand::default();
        let (a1, b1, a2, b2) = tokio::join!(
            store.decide(&one, &a, none),
            store.decide(&three, &b, none),
            store.decide(&one, &a, none),
            store.decide(&three, &b, none),
        );
        let decision = |r: Result<Answer, String>| r.unwrap().decision;
        let (a1, a2, b1, b2) = (decision(a1), decision(a2), decision(b1), decision(b2));
        assert!(a1.allowed && !a2.allowed, "{a1:?} {a2:?}");
        assert!(b1.allowed && b2.allowed);
        assert_eq!((b1.limit, b1.remaining, b2.remaining), (3, 2, 1));
        assert_eq!(a2.limit, 1);
    }

    /// A demand with a reserve is granted in one call: the decision, plus what the key
    /// used of its last grant (up to the reserve), taken from the shared count.
    #[tokio::test]
    async fn a_reserve_takes_admissions_ahead_from_the_shared_count() {
        require_redis();
        let store = RedisStore::new(URL, Duration::from_secs(2)).unwrap();
        for kind in ALGORITHMS {
            let params = Params {
                kind,
                rate: 10,
                // An hour: the test must not straddle a fixed window's end.
                per_micros: 3_600_000_000,
                burst: 10,
            };
            let key = fresh_key(&format!("reserve-{kind:?}"));
            let wanting = |wanted| Demand { reserve: 4, wanted };
            let first = store.decide(&params, &key, wanting(3)).await.unwrap();
            assert!(first.decision.allowed);
            let grant = first.grant.expect("a grant");
            assert_eq!((grant.tokens, grant.remaining), (3, 6), "{kind:?}");
            assert_eq!(first.decision.remaining, 9, "{kind:?}: counts what is held");
            match kind {
                RateLimitAlgorithm::FixedWindow => assert!(
                    (1..=3_600_000_000).contains(&grant.valid_micros),
                    "{kind:?}: good until the window's end"
                ),
                _ => assert_eq!(grant.valid_micros, 0, "{kind:?}"),
            }
            // Capped by the reserve, and by what is left.
            let second = store.decide(&params, &key, wanting(100)).await.unwrap();
            assert_eq!(second.grant.unwrap().tokens, 4, "{kind:?}");
            let third = store.decide(&params, &key, wanting(100)).await.unwrap();
            assert!(third.decision.allowed, "{kind:?}");
            assert_eq!(
                (third.grant.unwrap().tokens, third.grant.unwrap().remaining),
                (0, 0),
                "{kind:?}: 1 + 3 + 1 + 4 + 1 = the limit of 10"
            );
            let refused = store.decide(&params, &key, wanting(1)).await.unwrap();
            assert!(!refused.decision.allowed, "{kind:?}");
            assert!(refused.decision.reset_micros > 0, "{kind:?}");
        }
    }

    /// Without a reserve, a key's decisions in one batch are admitted exactly as many as
    /// the limit allows, in their order, and none is held back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_reserve_nothing_is_taken_ahead() {
        require_redis();
        let store = Arc::new(RedisStore::new(URL, Duration::from_secs(2)).unwrap());
        let params = Params {
            kind: RateLimitAlgorithm::TokenBucket,
            rate: 1_000,
            per_micros: 60_000_000,
            burst: 1_000,
        };
        let key = fresh_key("no-reserve");
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (store, key) = (store.clone(), key.clone());
                tokio::spawn(async move {
                    let demand = Demand {
                        reserve: 0,
                        wanted: 50,
                    };
                    store.decide(&params, &key, demand).await.unwrap()
                })
            })
            .collect();
        let mut remaining = Vec::new();
        for task in tasks {
            let answer = task.await.unwrap();
            assert!(answer.decision.allowed);
            assert_eq!(answer.grant.map_or(0, |g| g.tokens), 0);
            remaining.push(answer.decision.remaining);
        }
        remaining.sort_unstable();
        let expected: Vec<u64> = (900..1_000).collect();
        assert_eq!(
            remaining, expected,
            "each as if decided one after the other"
        );
    }
}
