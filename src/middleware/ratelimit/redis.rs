//! Counters in Redis, shared by every gateway instance. Each decision is one script run
//! (one round trip, atomic in Redis) using Redis' own clock, so instances agree.

use super::algorithm::{Decision, Params};
use crate::config::RateLimitAlgorithm;
use crate::redis_connection::RedisConnection;
use std::sync::OnceLock;
use std::time::Duration;

/// `KEYS[1]` the key; `ARGV`: rate, per (µs), burst. Returns {allowed, remaining, reset µs}.
const TOKEN_BUCKET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate, per, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local interval = per / rate
local s = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(s[1]) or burst
local last = tonumber(s[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) / interval)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
local reset = 0
if tokens < 1 then reset = math.ceil((1 - tokens) * interval) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * interval / 1000) + 1000)
return {allowed, math.floor(tokens), reset}
";

const LEAKY_BUCKET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate, per, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local interval = math.ceil(per / rate)
local capacity = burst * interval
local tat = math.max(tonumber(redis.call('GET', KEYS[1])) or now, now)
local next = tat + interval
if next - now <= capacity then
  redis.call('SET', KEYS[1], tostring(next), 'PX', math.ceil((next - now) / 1000) + 1000)
  return {1, math.max(0, math.floor((capacity - (next - now)) / interval)), math.max(0, next + interval - capacity - now)}
end
return {0, 0, next - now - capacity}
";

const FIXED_WINDOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate, per = tonumber(ARGV[1]), tonumber(ARGV[2])
local start = now - (now % per)
local key = KEYS[1] .. ':' .. tostring(start)
local count = tonumber(redis.call('GET', key)) or 0
if count >= rate then return {0, 0, start + per - now} end
count = redis.call('INCR', key)
if count == 1 then redis.call('PEXPIRE', key, math.ceil(per / 1000) + 1000) end
local remaining = math.max(0, rate - count)
local reset = 0
if remaining == 0 then reset = start + per - now end
return {1, remaining, reset}
";

pub struct RedisStore {
    /// Connected on first use; after a failed connect, decisions fail fast for a moment.
    connection: RedisConnection,
    timeout: Duration,
}

fn script(kind: RateLimitAlgorithm) -> &'static redis::Script {
    static SCRIPTS: OnceLock<[redis::Script; 3]> = OnceLock::new();
    let [token, leaky, window] = SCRIPTS.get_or_init(|| {
        [
            redis::Script::new(TOKEN_BUCKET),
            redis::Script::new(LEAKY_BUCKET),
            redis::Script::new(FIXED_WINDOW),
        ]
    });
    match kind {
        RateLimitAlgorithm::TokenBucket => token,
        RateLimitAlgorithm::LeakyBucket => leaky,
        RateLimitAlgorithm::FixedWindow => window,
    }
}

impl RedisStore {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        Ok(Self {
            connection: RedisConnection::new(url, timeout)?,
            timeout,
        })
    }

    /// One atomic decision, within the store timeout.
    pub async fn decide(&self, params: &Params, key: &str) -> Result<Decision, String> {
        let call = async {
            let mut connection = self.connection.get().await?;
            let (allowed, remaining, reset): (i64, i64, i64) = script(params.kind)
                .key(key)
                .arg(params.rate)
                .arg(params.per_micros)
                .arg(params.burst)
                .invoke_async(&mut connection)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Decision {
                allowed: allowed == 1,
                limit: match params.kind {
                    RateLimitAlgorithm::FixedWindow => params.rate,
                    _ => params.burst,
                },
                remaining: remaining.max(0) as u64,
                reset_micros: reset.max(0),
            })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| format!("redis did not answer within {:?}", self.timeout))?
    }
}
