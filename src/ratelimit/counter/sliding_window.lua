--[[
Exact sliding-window check-and-record for all of one tenant's counters of one request, in one
atomic step (Sluice, src/ratelimit/counter/redis.rs).

KEYS[i]  the sorted set of counter i. All keys carry the same {tenant} hash tag, so they share one
         Redis Cluster slot. A key may appear more than once (two descriptors on one counter).

ARGV[1]  not_after   Redis time in microseconds after which this call must record nothing: its
                     caller has answered it already (0 = no bound). See redis_clock.rs.
ARGV     then five values per key, in KEYS order (i = 1 .. #KEYS, b = 1 + 5 * (i - 1)):
           ARGV[b+1]  max_requests  hits allowed in any window_ms span
           ARGV[b+2]  window_ms     the window length in milliseconds (>= 1)
           ARGV[b+3]  burst_limit   0 = none; else hits allowed in any 1000 ms span
           ARGV[b+4]  hits          0 = check without counting
           ARGV[b+5]  enforcing     1 = enforcing; 0 = shadow (reported, never blocks the others)

Returns  a flat array: now (Redis TIME in microseconds), late (1 when now > not_after: nothing was
         read or written and no verdicts follow, else 0), then three integers per key, in KEYS
         order:
           allowed (1 or 0), remaining, reset_after_ms

Layout of a key: one member per recorded call, never one per hit. The member is
"<cumulative>:<weight>", cumulative zero-padded to 16 digits so that members with equal scores
sort in recording order; cumulative is the running total of hits recorded in the key (strictly
increasing, so members are unique). The score is Redis TIME in microseconds, never below the
previous member's score. The hits in any span are then
    last.cumulative - first_in_span.cumulative + first_in_span.weight
which costs two O(log n) range reads, whatever the number of members.

A hit at score s is in the window while now - s < window. Every written key gets a PEXPIRE of the
longest window it is used with plus one second, so no key is ever left without an expiry. The trim
and the PEXPIRE follow the windows of this call only: Sluice checks each key with one window (a log
is defined by policy or descriptor, tenant and window; src/ratelimit/service.rs), so neither can
drop a hit that another caller of the same key still counts.

Decision: a check fits when counted + hits <= max_requests and, with a burst limit,
counted_last_second + hits <= burst_limit. When every enforcing check fits, each fitting check
with hits > 0 records one member; otherwise nothing is recorded at all. allowed = fits.
remaining and reset_after_ms describe the counter after the call.
]]

local EXPIRY_SLACK_MS = 1000
local BURST_SPAN_US = 1000000

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

-- The counter as seen at `now`: hits in the window, hits in the last second (read only when
-- there is a burst limit), oldest score in the window (nil when empty), and the last member's
-- cumulative and score (0, 0 when empty).
local function read_counter(key, now, window_us, with_burst)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #last == 0 then
    return { counted = 0, burst = 0, oldest = nil, last_cumulative = 0, last_score = 0 }
  end
  local last_cumulative = parse_member(last[1])
  local counted, oldest = hits_after(key, now - window_us, last_cumulative)
  local burst = 0
  if with_burst then
    burst = hits_after(key, now - BURST_SPAN_US, last_cumulative)
  end
  return {
    counted = counted,
    burst = burst,
    oldest = oldest,
    last_cumulative = last_cumulative,
    last_score = tonumber(last[2]),
  }
end

-- Redis before 5 replicated scripts verbatim, which forbids writes after TIME; later versions
-- replicate effects and keep this only as a no-op.
if redis.replicate_commands then
  redis.replicate_commands()
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

-- The caller has given up on this call (Redis was frozen or slow while it waited in the socket):
-- whatever it answered, it did not count these hits, so neither may we.
local not_after = tonumber(ARGV[1])
if not_after > 0 and now > not_after then
  return { now, 1 }
end

local checks = {}
local longest_window_us = {}
for i = 1, #KEYS do
  local b = 1 + 5 * (i - 1)
  local check = {
    key = KEYS[i],
    max = tonumber(ARGV[b + 1]),
    window_us = tonumber(ARGV[b + 2]) * 1000,
    burst = tonumber(ARGV[b + 3]),
    hits = tonumber(ARGV[b + 4]),
    enforcing = ARGV[b + 5] == '1',
  }
  checks[i] = check
  if (longest_window_us[check.key] or 0) < check.window_us then
    longest_window_us[check.key] = check.window_us
  end
end

-- Trim with the longest window a key is used with, so one check never drops hits another still
-- counts.
for key, window_us in pairs(longest_window_us) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now - window_us))
end

-- Phase 1: decide, reading every counter before anything is written. `pending` holds the hits
-- earlier fitting checks of this call will add to a key, so a counter named twice is judged with
-- both.
local pending = {}
local every_enforcing_fits = true
for _, check in ipairs(checks) do
  local state = read_counter(check.key, now, check.window_us, check.burst > 0)
  local extra = (pending[check.key] or 0) + check.hits
  check.state = state
  check.fits = state.counted + extra <= check.max
    and (check.burst == 0 or state.burst + extra <= check.burst)
  if check.fits then
    pending[check.key] = (pending[check.key] or 0) + check.hits
  elseif check.enforcing then
    every_enforcing_fits = false
  end
end

-- Phase 2: record, all or nothing. A shadow check that does not fit records nothing.
-- `recorded[key]` tracks what this call added: hits, the running total and the score used.
local recorded = {}
if every_enforcing_fits then
  for _, check in ipairs(checks) do
    if check.fits and check.hits > 0 then
      local added = recorded[check.key]
      if not added then
        added = {
          hits = 0,
          cumulative = check.state.last_cumulative,
          -- Never below the last score, so score order stays recording order even if the
          -- server clock steps back (e.g. after a failover).
          score = math.max(now, check.state.last_score),
        }
        recorded[check.key] = added
      end
      added.hits = added.hits + check.hits
      added.cumulative = added.cumulative + check.hits
      redis.call('ZADD', check.key, fmt(added.score), string.format('%016d:%d', added.cumulative, check.hits))
    end
  end
  for key, _ in pairs(recorded) do
    redis.call('PEXPIRE', key, fmt(longest_window_us[key] / 1000 + EXPIRY_SLACK_MS))
  end
end

-- Phase 3: report the counters as they are after the call. What this call recorded sits at
-- `score` >= now, inside every window, so no second read is needed.
local result = { now, 0 }
for i, check in ipairs(checks) do
  local counted, burst, oldest = check.state.counted, check.state.burst, check.state.oldest
  local added = recorded[check.key]
  if added then
    counted = counted + added.hits
    burst = burst + added.hits
    oldest = oldest or added.score
  end
  local remaining = math.max(0, check.max - counted)
  if check.burst > 0 then
    remaining = math.min(remaining, math.max(0, check.burst - burst))
  end
  local reset_after_ms = 0
  if oldest then
    local left_us = oldest + check.window_us - now
    reset_after_ms = math.min(check.window_us / 1000, math.max(0, math.ceil(left_us / 1000)))
  end
  result[3 * i] = check.fits and 1 or 0
  result[3 * i + 1] = remaining
  result[3 * i + 2] = reset_after_ms
end
return result
