#!/usr/bin/env python3
# Usage: bench/ratelimit-redis-cost.py <redis-server pid> [decisions]   (Redis on 127.0.0.1:6379)
"""Redis CPU per rate-limit decision: the old store (one EVALSHA of the token-bucket
script per decision, pipelined 64 at a time as the multiplexed connection sends them at
c=64) against the batched store (one EVALSHA of the batch script per 64 decisions).
Redis' own CPU is read from /proc (utime+stime), so the load of the machine does not count."""
import os, socket, sys, time

PID = int(sys.argv[1]); N = int(sys.argv[2]) if len(sys.argv) > 2 else 64000
CONC = 64
TICK = os.sysconf('SC_CLK_TCK')

def cpu():
    f = open(f'/proc/{PID}/stat').read().rsplit(')', 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK

def cmd(*args):
    out = [b'*%d\r\n' % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b'$%d\r\n%s\r\n' % (len(a), a))
    return b''.join(out)

class Conn:
    def __init__(self):
        self.s = socket.create_connection(('127.0.0.1', 6379)); self.buf = b''
    def line(self):
        while b'\r\n' not in self.buf: self.buf += self.s.recv(1 << 16)
        l, self.buf = self.buf.split(b'\r\n', 1); return l
    def reply(self):
        l = self.line(); t = l[:1]
        if t == b'*': return [self.reply() for _ in range(int(l[1:]))]
        if t == b'$':
            n = int(l[1:])
            while len(self.buf) < n + 2: self.buf += self.s.recv(1 << 16)
            v, self.buf = self.buf[:n], self.buf[n + 2:]; return v
        if t == b'-': raise RuntimeError(l)
        return l
    def many(self, cmds):
        self.s.sendall(b''.join(cmds)); return [self.reply() for _ in cmds]

# The store before batching: one token-bucket script run per decision.
old = """
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
"""
# The store now: the batch script, read from the source.
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
text = open(os.path.join(root, 'src/middleware/ratelimit/redis.rs')).read()
new = text.split('const BATCH: &str = r"', 1)[1].split('";\n', 1)[0]
c = Conn()
sha_old = c.many([cmd('SCRIPT', 'LOAD', old)])[0].decode()
sha_new = c.many([cmd('SCRIPT', 'LOAD', new)])[0].decode()
rate, per, burst = 10**9, 1_000_000, 10**9   # never refuses, like the bench's limits

def run(label, batch):
    key = f'switchboard:rl:bench:{label}:{time.time()}'
    before = cpu(); t0 = time.time()
    for _ in range(N // CONC):
        if batch:
            args = ['EVALSHA', sha_new, CONC] + [key] * CONC
            for _ in range(CONC): args += ['t', rate, per, burst]
            r = c.many([cmd(*args)])[0]; assert len(r) == 3 * CONC
        else:
            r = c.many([cmd('EVALSHA', sha_old, 1, key, rate, per, burst)] * CONC)
    spent = cpu() - before
    print(f'{label}: {N} decisions, redis CPU {spent:.2f} s = {spent / N * 1e6:.2f} us/decision, wall {time.time() - t0:.1f} s')

for _ in range(2):
    run('one EVALSHA per decision (before)', False)
    run('one EVALSHA per 64 decisions (after)', True)
