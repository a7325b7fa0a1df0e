"""The breaker's state machine in Lua: one script per store operation, run atomically by Redis.

Each script is :data:`PRELUDE` (arguments, load/save of the hash, the shared steps) plus one
body: :data:`ACQUIRE`, :data:`RECORD`, :data:`TRANSITION`, :data:`SNAPSHOT`. ARGV[1] is the
caller's clock in ms, ARGV[2..9] the config (as ``store.RedisBreakerStore`` passes it),
then the operation's own arguments. ``twin`` is the same machine in Python, same names
and same steps; ``tests/integration/test_breaker_redis.py`` runs both on
random sequences of every operation and compares their answers and snapshots.

Why a ``.py`` module rather than a ``.lua`` file: the layer is imported from the source tree,
an editable install, a wheel and ``sam build``'s copy; a Python string travels with the code
in every one of them, while a ``.lua`` file needs package-data in pyproject plus a resource
loader, and a file left out would only show when a breaker first registers its scripts.
"""

PRELUDE = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local WINDOW = tonumber(ARGV[2])
local MINIMUM = tonumber(ARGV[3])
local FAILURE_THRESHOLD = tonumber(ARGV[4])
local SLOW_THRESHOLD = tonumber(ARGV[5])
local WAIT_MS = tonumber(ARGV[6])
local PERMITTED = tonumber(ARGV[7])
local AUTOMATIC = ARGV[8] == '1'
local HALF_OPEN_MAX_WAIT_MS = tonumber(ARGV[9])
local NUMERIC = {'ep', 'at', 'sz', 'mn', 'hd', 'n', 'f', 's', 'sf', 'np', 'hi'}

local function reset_metrics(c, size, minimum)
  c.sz = size; c.mn = minimum
  c.hd = 0; c.n = 0; c.f = 0; c.s = 0; c.sf = 0; c.np = 0; c.hi = 0; c.r = ''
end

local function enter(c, state, keep_metrics)
  c.st = state; c.ep = c.ep + 1; c.at = now
  if keep_metrics then return end
  if state == 'HALF_OPEN' then
    reset_metrics(c, PERMITTED, PERMITTED)
  else
    reset_metrics(c, WINDOW, MINIMUM)
  end
end

local function load()
  local v = redis.call('HMGET', key, 'st', 'r', unpack(NUMERIC))
  if not v[1] then
    local c = {st = 'CLOSED', ep = now, at = now}
    reset_metrics(c, WINDOW, MINIMUM)
    return c
  end
  local c = {st = v[1], r = v[2] or ''}
  for i, name in ipairs(NUMERIC) do c[name] = tonumber(v[i + 2]) end
  return c
end

local function save(c)
  local args = {'st', c.st, 'r', c.r}
  for _, name in ipairs(NUMERIC) do
    args[#args + 1] = name
    args[#args + 1] = c[name]
  end
  redis.call('HSET', key, unpack(args))
end

local function advance(c, acquiring)
  if c.st == 'OPEN' and (acquiring or AUTOMATIC) and now - c.at >= WAIT_MS then
    enter(c, 'HALF_OPEN', false)
  elseif c.st == 'HALF_OPEN' and HALF_OPEN_MAX_WAIT_MS > 0 and now - c.at >= HALF_OPEN_MAX_WAIT_MS then
    enter(c, 'OPEN', true)
  end
end

local function push(c, code)
  local idx = c.hd
  if c.n == c.sz then
    local old = tonumber(string.sub(c.r, idx + 1, idx + 1))
    c.f = c.f - old % 2
    if old >= 2 then c.s = c.s - 1 end
    if old == 3 then c.sf = c.sf - 1 end
  else
    c.n = c.n + 1
  end
  c.r = string.sub(c.r, 1, idx) .. code .. string.sub(c.r, idx + 2)
  c.hd = (idx + 1) % c.sz
  c.f = c.f + code % 2
  if code >= 2 then c.s = c.s + 1 end
  if code == 3 then c.sf = c.sf + 1 end
end

-- nil: fewer calls than the minimum; true/false: a rate reached its threshold or not
local function exceeded(c)
  if c.n < c.mn then return nil end
  return c.f * 100 >= FAILURE_THRESHOLD * c.n or c.s * 100 >= SLOW_THRESHOLD * c.n
end
"""

ACQUIRE = PRELUDE + """
local c = load()
advance(c, true)
local permitted = 0
if c.st == 'CLOSED' or c.st == 'DISABLED' then
  permitted = 1
elseif c.st == 'HALF_OPEN' and c.hi < c.sz then
  c.hi = c.hi + 1
  permitted = 1
else
  c.np = c.np + 1
end
save(c)
return {permitted, c.st, c.ep}
"""

RECORD = PRELUDE + """
local epoch = tonumber(ARGV[10])
local code = tonumber(ARGV[11])
local c = load()
advance(c, false)
if c.ep == epoch and (c.st == 'CLOSED' or c.st == 'HALF_OPEN') then
  push(c, code)
  local over = exceeded(c)
  if over then
    enter(c, 'OPEN', true)
  elseif over == false and c.st == 'HALF_OPEN' then
    enter(c, 'CLOSED', false)
  end
end
save(c)
return {1, c.st, c.ep}
"""

TRANSITION = PRELUDE + """
local c = load()
enter(c, ARGV[10], false)
save(c)
return {1, c.st, c.ep}
"""

SNAPSHOT = PRELUDE + """
local c = load()
advance(c, false)
save(c)
return {c.st, c.ep, c.n, c.f, c.s, c.sf, c.np, c.mn}
"""
