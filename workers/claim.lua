-- The fast workers' one script per job: record the last job's plain success (if any), then claim the
-- next job (if KEYS names queues). It writes exactly the keys and fields RQ's own worker writes (and a
-- worker's own list, where its BLMOVE puts a job for this script to claim).
--
-- KEYS: the queues' keys, in priority order (none: only record). With a job id already popped by a
--       blocking wait, KEYS[1] is the queue it came from; with '*' for it, KEYS[2] is this worker's own
--       list, where the BLMOVE sent just before this script, in the same write, moved it.
--
-- ARGV[1]: n, the number of success arguments that follow (0: nothing to record).
-- ARGV[2 .. n+1], the success:
--   1 RQ's key prefix ('rq')    2 worker name          3 job id               4 execution id
--   5 queue name                6 ended (RQ's date format)                    7 ended (epoch seconds)
--   8 result TTL (-1: for ever) 9 seconds worked       10 the worker's key TTL
--   11.. the result stream entry, as XADD's field-value list
-- ARGV[n+2]: h, the number of job history arguments that follow (config/history.py's Tally), by
--   four: a bucket's key, when it expires, a field, the runs to add to it
-- ARGV[n+h+3 ..], the claim:
--   1 RQ's key prefix           2 worker name          3 now (epoch seconds)  4 now (RQ's date format)
--   5 execution id              6 the job id a blocking wait popped ('' to pop here, '*' to take it
--   from KEYS[2]: claimed as it arrives, at Redis's time, with no round trip back to the worker first)
--   7 where that id sits: '0' nowhere (BLPOP; and for '*'), '2' not known: it was popped before an
--     outage, so after a failover it may be back in its queue. A job no longer queued (another worker
--     took it) is left alone, and a copy put back on its queue (by the orphan pass: also one that an
--     outage left in KEYS[2]) is taken out
--   then the heartbeat rule: 8 monitoring interval, 9 grace, 10 '1' for an in-process worker,
--   11 RQ's default worker TTL
--
-- Replies: {} (no job), {'suspended'}, {'dependents'} (the success was not recorded: the job has
-- dependents, which RQ's own success handling enqueues; nothing was claimed), or
-- {'job', queue name, job id, the job's hash as HGETALL's field-value list, the start (RQ's format)}.
-- A success recorded already (a reply lost on the way back) is not recorded twice.

local function recorded(results, eid)
  local last = redis.call('XREVRANGE', results, '+', '-', 'COUNT', 1)[1]
  if not last then return false end
  for i = 1, #last[2], 2 do
    if last[2][i] == 'execution_id' then return last[2][i + 1] == eid end
  end
  return false
end

local function record(a)
  local prefix, worker, id, eid, queue, stamp, ttl = a[1], a[2], a[3], a[4], a[5], a[6], tonumber(a[8])
  local jobkey = prefix .. ':job:' .. id
  if redis.call('EXISTS', jobkey .. ':dependents') == 1 then return false end
  local results = prefix .. ':results:' .. id
  if recorded(results, eid) then return true end
  local wkey = prefix .. ':worker:' .. worker
  redis.call('HINCRBY', wkey, 'successful_job_count', 1)
  redis.call('HINCRBYFLOAT', wkey, 'total_working_time', a[9])
  if redis.call('EXISTS', jobkey) == 1 then
    redis.call('HSET', jobkey, 'status', 'finished', 'ended_at', stamp, 'last_heartbeat', stamp)
    redis.call('XADD', results, 'MAXLEN', 10, '*', unpack(a, 11))
    if ttl == -1 then
      redis.call('PERSIST', results)
      redis.call('ZADD', prefix .. ':finished:' .. queue, '+inf', id)
    else
      redis.call('EXPIRE', results, ttl)
      redis.call('ZADD', prefix .. ':finished:' .. queue, math.floor(tonumber(a[7])) + ttl, id)
      redis.call('EXPIRE', jobkey, ttl)
      redis.call('EXPIRE', jobkey .. ':dependents', ttl)
      redis.call('EXPIRE', prefix .. ':job::' .. id .. ':dependencies', ttl)  -- sic: RQ's key
    end
  end
  local composite = id .. ':' .. eid
  redis.call('DEL', prefix .. ':execution:' .. composite)
  redis.call('ZREM', prefix .. ':wip:' .. queue, composite)
  redis.call('ZREM', prefix .. ':executions:' .. id, eid)
  redis.call('SREM', wkey .. ':executions', composite)
  redis.call('HSET', wkey, 'state', 'idle', 'last_heartbeat', stamp)
  redis.call('EXPIRE', wkey, a[10])
  return true
end

-- RQ's date format ('%Y-%m-%dT%H:%M:%S.%fZ') of a time in seconds and microseconds since the epoch.
local function utcformat(seconds, micros)
  local days = math.floor(seconds / 86400)
  local left = seconds - days * 86400
  -- the civil date of a day number (Howard Hinnant's days_from_civil, backwards)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%06dZ', year, month, day, math.floor(left / 3600),
    math.floor(left % 3600 / 60), left % 60, micros)
end

local function claim(a)
  local prefix, worker, created, stamp, eid, id = a[1], a[2], a[3], a[4], a[5], a[6]
  local qkey
  if id == '*' then  -- the job that has just arrived, or one an outage left between the two
    local own = redis.call('LRANGE', KEYS[2], 0, -1)
    redis.call('DEL', KEYS[2])
    id = nil
    for i = #own, 1, -1 do  -- the first still queued is claimed, the others go back to the queue's front
      if redis.call('HGET', prefix .. ':job:' .. own[i], 'status') == 'queued' then
        if id then redis.call('LREM', KEYS[1], 0, id) redis.call('LPUSH', KEYS[1], id) end
        id = own[i]
      end
    end
    if not id then return {} end
    local time = redis.call('TIME')
    created = time[1] .. '.' .. string.format('%06d', time[2])
    stamp = utcformat(tonumber(time[1]), tonumber(time[2]))
  end
  local now = tonumber(created)
  if id ~= '' then
    qkey = KEYS[1]
    -- A BLPOP's reply can come late (a host cut off, then back), a job can stay in KEYS[2] across an
    -- outage: by then the orphan recovery (or a failover) may have put it back on its queue, or another
    -- worker run it.
    if redis.call('HGET', prefix .. ':job:' .. id, 'status') ~= 'queued' then return {} end
    redis.call('LREM', qkey, 0, id)
    if a[7] == '2' then redis.call('LREM', qkey .. ':intermediate', 0, id) end
  else
    if redis.call('EXISTS', prefix .. ':suspended') == 1 then return {'suspended'} end
    for i = 1, #KEYS do
      while true do
        id = redis.call('LPOP', KEYS[i])
        if not id then break end
        if redis.call('EXISTS', prefix .. ':job:' .. id) == 1 then qkey = KEYS[i] break end
      end
      if qkey then break end
    end
    if not qkey then return {} end
  end
  local jobkey = prefix .. ':job:' .. id
  local interval, grace, default_ttl = tonumber(a[8]), tonumber(a[9]), tonumber(a[11])
  local timeout = tonumber(redis.call('HGET', jobkey, 'timeout'))
  local ttl
  if a[10] == '1' then
    if timeout == -1 then ttl = default_ttl else ttl = (timeout or default_ttl) + grace end
  elseif timeout and timeout > 0 then
    ttl = math.floor(math.min(timeout, interval)) + grace
  else
    ttl = interval + grace
  end
  local second = math.floor(now)
  local composite = id .. ':' .. eid
  local execution = prefix .. ':execution:' .. composite
  redis.call('HSET', execution, 'id', eid, 'job_id', id, 'created_at', created, 'last_heartbeat', created,
    'worker_name', worker)
  redis.call('EXPIRE', execution, ttl)
  redis.call('ZADD', prefix .. ':executions:' .. id, second + ttl + 60, eid)
  redis.call('EXPIRE', prefix .. ':executions:' .. id, ttl + 60)
  local queue = string.sub(qkey, #prefix + 8)
  redis.call('ZADD', prefix .. ':wip:' .. queue, second + ttl, composite)
  local wkey = prefix .. ':worker:' .. worker
  redis.call('SADD', wkey .. ':executions', composite)
  redis.call('HSET', wkey, 'state', 'busy', 'last_heartbeat', stamp)
  redis.call('EXPIRE', wkey, ttl)
  redis.call('EXPIRE', wkey .. ':executions', ttl)
  redis.call('HSET', jobkey, 'last_heartbeat', stamp, 'status', 'started', 'started_at', stamp,
    'worker_name', worker)
  redis.call('PERSIST', jobkey)
  return {'job', queue, id, redis.call('HGETALL', jobkey), stamp}
end

local n = tonumber(ARGV[1])
local h = tonumber(ARGV[n + 2])
for i = n + 3, n + h + 2, 4 do
  if redis.call('HINCRBY', ARGV[i], ARGV[i + 2], ARGV[i + 3]) == tonumber(ARGV[i + 3]) then
    redis.call('EXPIREAT', ARGV[i], ARGV[i + 1])  -- a new field: maybe a new bucket
  end
end
if n > 0 and not record({unpack(ARGV, 2, n + 1)}) then return {'dependents'} end
if #KEYS == 0 then return {} end
return claim({unpack(ARGV, n + h + 3)})
