--[[
Exact sliding-window check-and-record for a batch of requests, in one atomic step (Sluice,
src/ratelimit/counter/batch.rs builds the arguments and reads the reply). Each request is all of
one tenant's counters of one ShouldRateLimit call; the requests are decided one by one, each
exactly as if it were alone in a call of its own run right after the one before.

KEYS     the distinct sorted sets the batch names, each once. On Redis Cluster every key of one call
         lies in one hash slot (a tenant's keys share its {tenant} hash tag; the caller queues per
         slot); on a standalone Redis a batch may mix tenants.

ARGV     W, the number of windows, then three values per window:
           key         index into KEYS (1-based); every key has at least one window
           window_ms   the window length in milliseconds (>= 1)
           burst       1 when some check of this window has a burst limit (read the last second)
         then G, the number of groups, then per group:
           m           its number of requests (>= 1), all with the same checks
           n           the number of checks of each (>= 1)
           five values per check, in check order:
             window        index into the windows (1-based); a request may name a window twice
             max_requests  hits allowed in any window_ms span
             burst_limit   0 = none; else hits allowed in any 1000 ms span
             hits          0 = check without counting
             enforcing     1 = enforcing; 0 = shadow (reported, never blocks the others)
           deadlines   one string: per request its not_after, the Redis time in microseconds
                       after which it must record nothing (its caller has answered it already;
                       see redis_clock.rs), as 16 digits, in ascending order; a request with no
                       bound sorts last as 9999999999999999. One argument however many requests,
                       so a request of a group costs Redis sixteen bytes and no parsing.

A group is a run of requests with identical checks that the caller may decide together: the
groups in ARGV order are the requests in an order equivalent to their arrival order (batch.rs
moves a request into an earlier group only past groups that share no key with it, so no decision
changes). Within a group the requests are interchangeable and go in deadline order.

Returns  a flat array:
           now                 Redis TIME in microseconds; a request is late when now > its
                               not_after: it was neither decided nor recorded
           per window          counted (hits in the window before this batch), oldest (score of
                               the oldest of them, -1 when none)
           per key             burst (hits in the last second before this batch, -1 when no check
                               asked), score (where this batch's hits are recorded)
           per group           allowed, fits:
             all checks enforcing: allowed = how many of the group's live (not late) requests,
               from the first in deadline order, were allowed; fits = one '1'/'0' per check for every request after
               those (all of them see the same counters, since a denied request records nothing),
               or '' when none was denied
             else: allowed = -1; fits = one '1'/'0' per check per live request, in deadline order
         The caller derives every verdict's remaining and reset_after_ms from these.

Layout of a key: one member per call that recorded hits in it, never one per hit or per request.
The member is "<cumulative>:<weight>", cumulative zero-padded to 16 digits so that members with
equal scores sort in recording order; cumulative is the running total of hits recorded in the key
(strictly increasing, so members are unique), weight the hits this member adds. The score is Redis
TIME in microseconds, never below the previous member's score. The hits in any span are then
    last.cumulative - first_in_span.cumulative + first_in_span.weight
which costs two O(log n) range reads, whatever the number of members. The requests of one batch
share one TIME, so the hits they record in one key are exactly one member: their sum, one score.

A hit at score s is in the window while now - s < window. Members out of every window are trimmed
at most once per eighth of the key's longest window (the first call whose TIME falls in a new such
epoch trims), so a hot key pays for trimming rarely and holds at most an eighth of a window of old
members; reads never depend on trimming. Every written key gets a PEXPIRE of the longest window it
is used with plus one second, so no key is ever left without an expiry. Trim and PEXPIRE follow
the windows of this call only: Sluice checks each key with one window (a log is defined by policy
or descriptor, tenant and window; src/ratelimit/keys.rs), so neither can drop a hit that another
caller of the same key still counts.

Per key the script runs one read of its last member, one read of the first member in each window
(and in the last second where a burst limit applies), and, when the batch recorded hits in it, one
ZADD and one PEXPIRE: the cost of a key is the same for one request as for a thousand. A group of
requests whose checks are all enforcing is decided in one step whatever its size.

Decision of one request: a check fits when counted + hits <= max_requests and, with a burst limit,
counted_last_second + hits <= burst_limit, where counted includes what earlier requests of the batch
recorded and what earlier fitting checks of this request will record in the same key. When every
enforcing check fits, each fitting check adds its hits; otherwise the request adds nothing at all.
]]

local EXPIRY_SLACK_MS = 1000
local BURST_SPAN_US = 1000000
local TRIM_EPOCHS_PER_WINDOW = 8
local ARGS_PER_CHECK = 5
local DEADLINE_DIGITS = 16

local function fmt(n)
  return string.format('%d', n)
end

local function parse_member(member)
  local cumulative, weight = string.match(member, '^(%d+):(%d+)$')
  return tonumber(cumulative), tonumber(weight)
end

-- Redis before 5 replicated scripts verbatim, which forbids writes after TIME; later versions
-- replicate effects and keep this only as a no-op.
if redis.replicate_commands then
  redis.replicate_commands()
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

-- Windows.
local window_count = tonumber(ARGV[1])
local window_key, window_us = {}, {}
local longest_us, wants_burst = {}, {}
local pos = 2
for w = 1, window_count do
  local k = tonumber(ARGV[pos])
  local us = tonumber(ARGV[pos + 1]) * 1000
  window_key[w] = k
  window_us[w] = us
  if (longest_us[k] or 0) < us then
    longest_us[k] = us
  end
  if ARGV[pos + 2] == '1' then
    wants_burst[k] = true
  end
  pos = pos + 3
end

-- Per key: its last member (the running total), the score this batch writes at (never below the
-- last score, so score order stays recording order even if the server clock steps back), and the
-- trim when a new epoch began since the last write.
local last_cumulative, score, added, burst = {}, {}, {}, {}
local result = { now }
for k = 1, #KEYS do
  local key = KEYS[k]
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  local cumulative, last_score = 0, 0
  if #last > 0 then
    cumulative = parse_member(last[1])
    last_score = tonumber(last[2])
    local epoch_us = math.max(1, math.floor(longest_us[k] / TRIM_EPOCHS_PER_WINDOW))
    if math.floor(now / epoch_us) ~= math.floor(last_score / epoch_us) then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now - longest_us[k]))
    end
  end
  last_cumulative[k] = cumulative
  score[k] = math.max(now, last_score)
  added[k] = 0
end

-- Hits recorded in key k with a score above `after`, and the oldest such score (-1: none).
local function hits_after(k, after)
  if last_cumulative[k] == 0 then
    return 0, -1
  end
  local first = redis.call('ZRANGEBYSCORE', KEYS[k], '(' .. fmt(after), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #first == 0 then
    return 0, -1
  end
  local cumulative, weight = parse_member(first[1])
  return last_cumulative[k] - cumulative + weight, tonumber(first[2])
end

local counted = {}
for w = 1, window_count do
  local oldest
  counted[w], oldest = hits_after(window_key[w], now - window_us[w])
  result[#result + 1] = counted[w]
  result[#result + 1] = oldest
end
for k = 1, #KEYS do
  if wants_burst[k] then
    burst[k] = hits_after(k, now - BURST_SPAN_US)
    result[#result + 1] = burst[k]
  else
    burst[k] = 0
    result[#result + 1] = -1
  end
  result[#result + 1] = score[k]
end

-- Scratch space shared by every group (a script call allocates nothing per request):
-- the checks of the group being decided, and per key what one request adds to it. `mark[k] == g`
-- says the entry of key k belongs to the current group (or request) g, so nothing is cleared.
local c_window, c_max, c_burst, c_hits, c_enforcing = {}, {}, {}, {}, {}
local fits, through, per_key, mark, touched = {}, {}, {}, {}, {}
local stamp = 0

-- Starts key k's entry of per_key for the current stamp, once: 0 hits, listed in touched.
-- Returns how many keys touched now lists.
local function touch(k, count)
  if mark[k] ~= stamp then
    mark[k] = stamp
    per_key[k] = 0
    count = count + 1
    touched[count] = k
  end
  return count
end

-- One request of the group (n checks) against the counters as they are: fills fits[1..n] with
-- '1' or '0', and per_key[k] with the hits it would add to each key it names, listed in
-- touched[1..returned count]; returns whether every enforcing check fits and that count.
local function decide_one(n)
  stamp = stamp + 1
  local count = 0
  local every_enforcing_fits = true
  for c = 1, n do
    local w = c_window[c]
    local k = window_key[w]
    count = touch(k, count)
    local extra = added[k] + per_key[k] + c_hits[c]
    if counted[w] + extra <= c_max[c] and (c_burst[c] == 0 or burst[k] + extra <= c_burst[c]) then
      per_key[k] = per_key[k] + c_hits[c]
      fits[c] = '1'
    else
      fits[c] = '0'
      if c_enforcing[c] then
        every_enforcing_fits = false
      end
    end
  end
  return every_enforcing_fits, count
end

local group_count = tonumber(ARGV[pos])
pos = pos + 1
for _ = 1, group_count do
  local m = tonumber(ARGV[pos])
  local n = tonumber(ARGV[pos + 1])
  pos = pos + 2
  local all_enforcing = true
  for c = 1, n do
    c_window[c] = tonumber(ARGV[pos])
    c_max[c] = tonumber(ARGV[pos + 1])
    c_burst[c] = tonumber(ARGV[pos + 2])
    c_hits[c] = tonumber(ARGV[pos + 3])
    local enforcing = ARGV[pos + 4] == '1'
    c_enforcing[c] = enforcing
    all_enforcing = all_enforcing and enforcing
    pos = pos + ARGS_PER_CHECK
  end
  -- A late request's caller has given up on it (Redis was frozen or slow while it waited in a
  -- queue or the socket): whatever it answered, it did not count these hits, so neither may we.
  -- The others go on. The deadlines are sorted, so the late ones come first: find the first
  -- request that is not late by bisection.
  local deadlines = ARGV[pos]
  pos = pos + 1
  if #deadlines ~= m * DEADLINE_DIGITS then
    return redis.error_reply('sliding_window: a group of ' .. m .. ' requests with ' .. #deadlines .. ' deadline digits')
  end
  local lo, hi = 1, m + 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if tonumber(string.sub(deadlines, mid * DEADLINE_DIGITS - DEADLINE_DIGITS + 1, mid * DEADLINE_DIGITS)) >= now then
      hi = mid
    else
      lo = mid + 1
    end
  end
  local live = m + 1 - lo

  if all_enforcing then
    -- Request j (from 0) of the group, after j allowed ones, fits check c on key K when
    --   counted + added[K] + j * per_key[K] + through[c] <= max (and the same for the burst)
    -- where per_key[K] is the hits one request adds to K and through[c] those of the checks
    -- up to c that name K. The first request that does not fit is denied, and so is every later
    -- one: a denied request records nothing, so they all see the same counters.
    stamp = stamp + 1
    local count = 0
    for c = 1, n do
      local k = window_key[c_window[c]]
      count = touch(k, count)
      per_key[k] = per_key[k] + c_hits[c]
      through[c] = per_key[k]
    end
    local allowed = live
    for c = 1, n do
      local w = c_window[c]
      local k = window_key[w]
      local slack = c_max[c] - counted[w] - added[k] - through[c]
      if c_burst[c] > 0 then
        slack = math.min(slack, c_burst[c] - burst[k] - added[k] - through[c])
      end
      if slack < 0 then
        allowed = 0
      elseif per_key[k] > 0 then
        allowed = math.min(allowed, math.floor(slack / per_key[k]) + 1)
      end
    end
    for i = 1, count do
      local k = touched[i]
      added[k] = added[k] + allowed * per_key[k]
    end
    result[#result + 1] = allowed
    if allowed < live then
      decide_one(n)
      result[#result + 1] = table.concat(fits, '', 1, n)
    else
      result[#result + 1] = ''
    end
  else
    local out = {}
    for i = 1, live do
      local every_enforcing_fits, count = decide_one(n)
      if every_enforcing_fits then
        for t = 1, count do
          local k = touched[t]
          added[k] = added[k] + per_key[k]
        end
      end
      out[i] = table.concat(fits, '', 1, n)
    end
    result[#result + 1] = -1
    result[#result + 1] = table.concat(out)
  end
end

-- Write: per key, the batch's hits as one member and one expiry.
for k = 1, #KEYS do
  if added[k] > 0 then
    local key = KEYS[k]
    redis.call('ZADD', key, fmt(score[k]),
      string.format('%016d:%d', last_cumulative[k] + added[k], added[k]))
    redis.call('PEXPIRE', key, fmt(longest_us[k] / 1000 + EXPIRY_SLACK_MS))
  end
end

return result
