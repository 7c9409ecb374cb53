--[[
Exact sliding-window check-and-record for a batch of requests, in one atomic step (Sluice,
src/ratelimit/counter/redis_batch.rs). Each request is all of one tenant's counters of one
ShouldRateLimit call; the requests are decided one by one, in ARGV order (their arrival order), each
exactly as if it were alone in a call of its own run right after the one before.

KEYS     the distinct sorted sets the batch names, each once. On Redis Cluster every key of one call
         lies in one hash slot (a tenant's keys share its {tenant} hash tag; the caller queues per
         slot); on a standalone Redis a batch may mix tenants.

ARGV[1]  R, the number of requests. Then, per request:
           not_after   Redis time in microseconds after which this request must record nothing:
                       its caller has answered it already (0 = no bound). See redis_clock.rs.
           n           its number of checks (>= 1)
         then six values per check, in the request's check order:
           key         index into KEYS (1-based); a request may name a key more than once
           max_requests  hits allowed in any window_ms span
           window_ms   the window length in milliseconds (>= 1)
           burst_limit 0 = none; else hits allowed in any 1000 ms span
           hits        0 = check without counting
           enforcing   1 = enforcing; 0 = shadow (reported, never blocks the others)

Returns  a flat array: now (Redis TIME in microseconds), then per request, in ARGV order:
           late        1 when now > not_after: the request was not read or recorded and nothing
                       else follows for it; else 0, followed by
           three integers per check, in its check order: allowed (1 or 0), remaining,
           reset_after_ms

Layout of a key: one member per call that recorded hits in it, never one per hit or per request.
The member is "<cumulative>:<weight>", cumulative zero-padded to 16 digits so that members with
equal scores sort in recording order; cumulative is the running total of hits recorded in the key
(strictly increasing, so members are unique), weight the hits this member adds. The score is Redis
TIME in microseconds, never below the previous member's score. The hits in any span are then
    last.cumulative - first_in_span.cumulative + first_in_span.weight
which costs two O(log n) range reads, whatever the number of members. The requests of one batch
share one TIME, so the hits they record in one key are exactly one member: their sum, one score.

A hit at score s is in the window while now - s < window. Every written key gets a PEXPIRE of the
longest window it is used with plus one second, so no key is ever left without an expiry. The trim
and the PEXPIRE follow the windows of this call only: Sluice checks each key with one window (a log
is defined by policy or descriptor, tenant and window; src/ratelimit/service.rs), so neither can
drop a hit that another caller of the same key still counts.

Per key the script runs one trim, one read of its last member and of the first member in its window
(one more read where a burst limit applies), and, when the batch recorded hits in it, one ZADD and
one PEXPIRE: the cost of a key is the same for one request as for 256.

Decision of one request: a check fits when counted + hits <= max_requests and, with a burst limit,
counted_last_second + hits <= burst_limit, where counted includes what earlier requests of the batch
recorded and what earlier fitting checks of this request will record in the same key. When every
enforcing check fits, each fitting check adds its hits; otherwise the request adds nothing at all.
allowed = fits. remaining and reset_after_ms describe the counter right after this request.
]]

local EXPIRY_SLACK_MS = 1000
local BURST_SPAN_US = 1000000
local ARGS_PER_CHECK = 6

local function fmt(n)
  return string.format('%d', n)
end

local function parse_member(member)
  local cumulative, weight = string.match(member, '^(%d+):(%d+)$')
  return tonumber(cumulative), tonumber(weight)
end

-- Hits recorded in key with a score above `after` (microseconds), given the last member's
-- cumulative; with the oldest such score, or nil when there is none.
local function hits_after(key, after, last_cumulative)
  local first = redis.call('ZRANGEBYSCORE', key, '(' .. fmt(after), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #first == 0 then
    return 0, nil
  end
  local cumulative, weight = parse_member(first[1])
  return last_cumulative - cumulative + weight, tonumber(first[2])
end

-- Redis before 5 replicated scripts verbatim, which forbids writes after TIME; later versions
-- replicate effects and keep this only as a no-op.
if redis.replicate_commands then
  redis.replicate_commands()
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

-- Parse every request. A late request's caller has given up on it (Redis was frozen or slow while
-- it waited in a queue or the socket): whatever it answered, it did not count these hits, so
-- neither may we — but the others of the batch go on.
local requests = {}
local longest_window_us = {}
local pos = 2
for r = 1, tonumber(ARGV[1]) do
  local not_after = tonumber(ARGV[pos])
  local n = tonumber(ARGV[pos + 1])
  pos = pos + 2
  local request = { late = not_after > 0 and now > not_after, checks = {} }
  if not request.late then
    for c = 1, n do
      local b = pos + ARGS_PER_CHECK * (c - 1)
      local check = {
        key = tonumber(ARGV[b]),
        max = tonumber(ARGV[b + 1]),
        window_us = tonumber(ARGV[b + 2]) * 1000,
        burst = tonumber(ARGV[b + 3]),
        hits = tonumber(ARGV[b + 4]),
        enforcing = ARGV[b + 5] == '1',
      }
      request.checks[c] = check
      if (longest_window_us[check.key] or 0) < check.window_us then
        longest_window_us[check.key] = check.window_us
      end
    end
  end
  pos = pos + ARGS_PER_CHECK * n
  requests[r] = request
end

-- One state per key, read on first use: trimmed with the longest window the batch uses it with
-- (so one check never drops hits another still counts), then its last member. `added` is what
-- the batch has recorded in it so far; `windows` and `burst` cache the reads.
local states = {}
local function key_state(k)
  local state = states[k]
  if state then
    return state
  end
  local key = KEYS[k]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now - longest_window_us[k]))
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  state = { added = 0, windows = {}, last_cumulative = 0, last_score = 0, empty = #last == 0 }
  if not state.empty then
    state.last_cumulative = parse_member(last[1])
    state.last_score = tonumber(last[2])
  end
  states[k] = state
  return state
end

-- Hits in the window before this batch's own, and the oldest score in it (nil when empty).
local function window_of(k, state, window_us)
  local window = state.windows[window_us]
  if not window then
    window = { counted = 0, oldest = nil }
    if not state.empty then
      window.counted, window.oldest = hits_after(KEYS[k], now - window_us, state.last_cumulative)
    end
    state.windows[window_us] = window
  end
  return window
end

-- Hits in the last second before this batch's own.
local function burst_of(k, state)
  if not state.burst then
    state.burst = 0
    if not state.empty then
      state.burst = hits_after(KEYS[k], now - BURST_SPAN_US, state.last_cumulative)
    end
  end
  return state.burst
end

-- Where this batch's hits go: never below the last score, so score order stays recording order
-- even if the server clock steps back (e.g. after a failover).
local function score_of(state)
  return math.max(now, state.last_score)
end

local result = { now }
for _, request in ipairs(requests) do
  if request.late then
    result[#result + 1] = 1
  else
    result[#result + 1] = 0
    -- Decide, reading before anything of this request is added. `pending` holds the hits
    -- earlier fitting checks of this request will add to a key, so a key named twice is judged
    -- with both.
    local pending = {}
    local every_enforcing_fits = true
    for _, check in ipairs(request.checks) do
      local state = key_state(check.key)
      local window = window_of(check.key, state, check.window_us)
      local extra = state.added + (pending[check.key] or 0) + check.hits
      check.fits = window.counted + extra <= check.max
        and (check.burst == 0 or burst_of(check.key, state) + extra <= check.burst)
      if check.fits then
        pending[check.key] = (pending[check.key] or 0) + check.hits
      elseif check.enforcing then
        every_enforcing_fits = false
      end
    end
    -- Record, all or nothing. A shadow check that does not fit adds nothing.
    if every_enforcing_fits then
      for k, hits in pairs(pending) do
        states[k].added = states[k].added + hits
      end
    end
    -- Report the counters as they are after this request. What the batch recorded sits at
    -- score_of(state) >= now, inside every window and the last second.
    for _, check in ipairs(request.checks) do
      local state = states[check.key]
      local window = state.windows[check.window_us]
      local counted = window.counted + state.added
      local oldest = window.oldest
      if not oldest and state.added > 0 then
        oldest = score_of(state)
      end
      local remaining = math.max(0, check.max - counted)
      if check.burst > 0 then
        remaining = math.min(remaining, math.max(0, check.burst - burst_of(check.key, state) - state.added))
      end
      local reset_after_ms = 0
      if oldest then
        local left_us = oldest + check.window_us - now
        reset_after_ms = math.min(check.window_us / 1000, math.max(0, math.ceil(left_us / 1000)))
      end
      result[#result + 1] = check.fits and 1 or 0
      result[#result + 1] = remaining
      result[#result + 1] = reset_after_ms
    end
  end
end

-- Write: per key, the batch's hits as one member and one expiry.
for k, state in pairs(states) do
  if state.added > 0 then
    local key = KEYS[k]
    redis.call('ZADD', key, fmt(score_of(state)),
      string.format('%016d:%d', state.last_cumulative + state.added, state.added))
    redis.call('PEXPIRE', key, fmt(longest_window_us[k] / 1000 + EXPIRY_SLACK_MS))
  end
end

return result
