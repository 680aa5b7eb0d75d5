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

/// `KEYS[i]` a key; `ARGV[4i-3..4i]` its policy: kind (`t`oken bucket, `l`eaky bucket,
/// fixed `w`indow), rate, per (µs), burst. Decides the keys in order (one key may come
/// several times) and returns {allowed, remaining, reset µs} for each, flattened.
///
/// Each key is read once and written once per call: a key's state lives in a Lua table
/// between its decisions, holding exactly what a write and a read would have given back
/// (`tonumber(tostring(x))`: Redis' Lua keeps 14 significant digits), so a batch decides
/// as the same decisions made one call each would, for a fraction of the Redis work.
const BATCH: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function stored(x) return tonumber(tostring(x)) end

local buckets, gcras, windows = {}, {}, {}

local function token_bucket(key, rate, per, burst)
  local interval = per / rate
  local b = buckets[key]
  if not b then
    local s = redis.call('HMGET', key, 'tokens', 'last')
    b = {tokens = tonumber(s[1]) or burst, last = tonumber(s[2]) or now}
    buckets[key] = b
  end
  local tokens = math.min(burst, b.tokens + math.max(0, now - b.last) / interval)
  local allowed = 0
  if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
  local reset = 0
  if tokens < 1 then reset = math.ceil((1 - tokens) * interval) end
  b.tokens, b.last = stored(tokens), stored(now)
  b.ttl = math.ceil((burst - tokens) * interval / 1000) + 1000
  return allowed, math.floor(tokens), reset
end

local function leaky_bucket(key, rate, per, burst)
  local interval = math.ceil(per / rate)
  local capacity = burst * interval
  local g = gcras[key]
  if not g then
    g = {tat = tonumber(redis.call('GET', key))}
    gcras[key] = g
  end
  local tat = math.max(g.tat or now, now)
  local next = tat + interval
  if next - now <= capacity then
    g.tat, g.ttl = stored(next), math.ceil((next - now) / 1000) + 1000
    return 1, math.max(0, math.floor((capacity - (next - now)) / interval)), math.max(0, next + interval - capacity - now)
  end
  return 0, 0, next - now - capacity
end

local function fixed_window(key, rate, per)
  local start = now - (now % per)
  local window = key .. ':' .. tostring(start)
  local w = windows[window]
  if not w then
    w = {count = tonumber(redis.call('GET', window)) or 0, added = 0, per = per}
    windows[window] = w
  end
  if w.count >= rate then return 0, 0, start + per - now end
  w.count, w.added = w.count + 1, w.added + 1
  local remaining = math.max(0, rate - w.count)
  local reset = 0
  if remaining == 0 then reset = start + per - now end
  return 1, remaining, reset
end

local out = {}
for i, key in ipairs(KEYS) do
  local at = (i - 1) * 4
  local kind = ARGV[at + 1]
  local rate, per, burst = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
  local allowed, remaining, reset
  if kind == 't' then
    allowed, remaining, reset = token_bucket(key, rate, per, burst)
  elseif kind == 'l' then
    allowed, remaining, reset = leaky_bucket(key, rate, per, burst)
  else
    allowed, remaining, reset = fixed_window(key, rate, per)
  end
  local o = (i - 1) * 3
  out[o + 1] = allowed
  out[o + 2] = remaining
  out[o + 3] = reset
end

for key, b in pairs(buckets) do
  redis.call('HSET', key, 'tokens', tostring(b.tokens), 'last', tostring(b.last))
  redis.call('PEXPIRE', key, b.ttl)
end
for key, g in pairs(gcras) do
  if g.ttl then redis.call('SET', key, tostring(g.tat), 'PX', g.ttl) end
end
for window, w in pairs(windows) do
  if w.added > 0 then
    local count = redis.call('INCRBY', window, w.added)
    if count == w.added then redis.call('PEXPIRE', window, math.ceil(w.per / 1000) + 1000) end
  end
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

/// One decision waiting for its batch.
struct Pending {
    key: String,
    params: Params,
    reply: oneshot::Sender<Result<Decision, String>>,
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
    pub async fn decide(&self, params: &Params, key: &str) -> Result<Decision, String> {
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
            Ok(decisions) => {
                for (pending, decision) in batch.drain(..).zip(decisions) {
                    let _ = pending.reply.send(Ok(decision));
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

/// One script call deciding every decision of `batch`, in order.
async fn decide_batch(
    connection: &RedisConnection,
    batch: &[Pending],
) -> Result<Vec<Decision>, String> {
    let mut connection = connection.get().await?;
    let mut invocation = script().prepare_invoke();
    for pending in batch {
        let p = &pending.params;
        let kind = match p.kind {
            RateLimitAlgorithm::TokenBucket => "t",
            RateLimitAlgorithm::LeakyBucket => "l",
            RateLimitAlgorithm::FixedWindow => "w",
        };
        invocation
            .key(&pending.key)
            .arg(kind)
            .arg(p.rate)
            .arg(p.per_micros)
            .arg(p.burst);
    }
    let flat: Vec<i64> = invocation
        .invoke_async(&mut connection)
        .await
        .map_err(|e| e.to_string())?;
    if flat.len() != 3 * batch.len() {
        return Err(format!(
            "rate limit script answered {} values for {} decisions",
            flat.len(),
            batch.len()
        ));
    }
    Ok(batch
        .iter()
        .zip(flat.chunks_exact(3))
        .map(|(pending, answer)| {
            let p = &pending.params;
            Decision {
                allowed: answer[0] == 1,
                limit: match p.kind {
                    RateLimitAlgorithm::FixedWindow => p.rate,
                    _ => p.burst,
                },
                remaining: answer[1].max(0) as u64,
                reset_micros: answer[2].max(0),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "redis://127.0.0.1:6379";

    fn require_redis() {
        let addr = "127.0.0.1:6379".parse().expect("address");
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            panic!(
                "Redis not reachable on 127.0.0.1:6379: start it with `redis-server --daemonize yes --port 6379 --save \"\"` (or scripts/services)"
            );
        }
    }

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
        for kind in [
            RateLimitAlgorithm::TokenBucket,
            RateLimitAlgorithm::LeakyBucket,
            RateLimitAlgorithm::FixedWindow,
        ] {
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
                    tokio::spawn(async move { store.decide(&params, &key).await.unwrap() })
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
        let (a1, b1, a2, b2) = tokio::join!(
            store.decide(&one, &a),
            store.decide(&three, &b),
            store.decide(&one, &a),
            store.decide(&three, &b),
        );
        let (a1, a2, b1, b2) = (a1.unwrap(), a2.unwrap(), b1.unwrap(), b2.unwrap());
        assert!(a1.allowed && !a2.allowed, "{a1:?} {a2:?}");
        assert!(b1.allowed && b2.allowed);
        assert_eq!((b1.limit, b1.remaining, b2.remaining), (3, 2, 1));
        assert_eq!(a2.limit, 1);
    }
}
