"""Lua scripts the Redis store runs server-side, each one atomic.

All keys of one show carry the hash tag {show}, so a show's keys live on one Redis Cluster slot.
"""

# KEYS: seq, events zset, state hash.  ARGV: event JSON without "seq", state slot, channel.
# Returns the new sequence number.
APPEND_EVENT = """
local seq = redis.call('INCR', KEYS[1])
local event = '{"seq":' .. seq .. ',' .. string.sub(ARGV[1], 2)
redis.call('ZADD', KEYS[2], seq, event)
if ARGV[2] ~= '' then redis.call('HSET', KEYS[3], ARGV[2], event) end
redis.call('PUBLISH', ARGV[3], event)
return seq
"""

# KEYS: pins list.  ARGV: end_wall, end_s ('' when unknown).
# Closes the open pin, if any; returns it (JSON, closed) or false.
CLOSE_PIN = """
local last = redis.call('LINDEX', KEYS[1], -1)
if not last then return false end
local pin = cjson.decode(last)
if pin.end_wall ~= cjson.null and pin.end_wall ~= nil then return false end
pin.end_wall = tonumber(ARGV[1])
if ARGV[2] == '' then pin.end_s = cjson.null else pin.end_s = tonumber(ARGV[2]) end
local closed = cjson.encode(pin)
redis.call('LSET', KEYS[1], -1, closed)
return closed
"""

# KEYS: coupon hash, coupons zset.  ARGV: coupon id, created_at, then field/value pairs.
# Returns 1 when created, 0 when the id is taken.
CREATE_COUPON = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), ARGV[1])
return 1
"""

# KEYS: coupon hash.  ARGV: now.  A draft goes live: its window starts now unless it was set.
# Returns 'missing', 'stopped' or 'ok'.
LAUNCH_COUPON = """
local c = redis.call('HMGET', KEYS[1], 'state', 'starts_at', 'ends_at', 'duration_s')
if not c[1] then return 'missing' end
if c[1] == 'stopped' then return 'stopped' end
if c[1] == 'draft' then
  local starts = tonumber(c[2]) or tonumber(ARGV[1])
  local ends = tonumber(c[3]) or (starts + (tonumber(c[4]) or 0))
  redis.call('HSET', KEYS[1], 'state', 'live', 'starts_at', string.format('%.6f', starts),
             'ends_at', string.format('%.6f', ends))
end
return 'ok'
"""

# KEYS: coupon hash.  Returns 'missing' or 'ok'.
STOP_COUPON = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
redis.call('HSET', KEYS[1], 'state', 'stopped')
return 'ok'
"""

# One claim, decided exactly as coupons.decide() does.
# KEYS: request key, coupon hash, coupon rooms hash, coupon viewers hash, claim figures hash,
#       the requests hash of older versions (read only), invites per inviter (read only).
# ARGV: request field (viewer|key), viewer id, room, sharer ('' if none), coupon id, now,
#       seconds the answer is kept for retries.
# Returns the request record {"coupon", "response"} (the first one for a retried request),
# or 'missing' when there is no such coupon (nothing is stored then).
CLAIM = """
local seen = redis.call('GET', KEYS[1]) or redis.call('HGET', KEYS[6], ARGV[1])
if seen then return seen end
local c = redis.call('HMGET', KEYS[2], 'state', 'starts_at', 'ends_at', 'quantity', 'per_viewer_limit',
                     'room_caps', 'claimed', 'kind', 'invites_required')
if not c[1] then return 'missing' end
local now = tonumber(ARGV[6])
local room = ARGV[3]
local starts, ends = tonumber(c[2]), tonumber(c[3])
local quantity, claimed = tonumber(c[4]), tonumber(c[7])
local cap = cjson.decode(c[6])[room]
local in_room = tonumber(redis.call('HGET', KEYS[3], room) or '0')
local mine = tonumber(redis.call('HGET', KEYS[4], ARGV[2]) or '0')
local result
if c[1] == 'draft' or (starts and now < starts) then
  result = 'not_started'
elseif c[1] == 'stopped' or (ends and now >= ends) then
  result = 'ended'
elseif c[8] == 'invite' and tonumber(redis.call('HGET', KEYS[7], ARGV[2]) or '0') < tonumber(c[9]) then
  -- not kept for the key: a later claim, with more invitees, is decided anew
  return '{"coupon":' .. cjson.encode(ARGV[5]) .. ',"response":{"result":"needs_invites","invites":' ..
         string.format('%d', tonumber(redis.call('HGET', KEYS[7], ARGV[2]) or '0')) ..
         ',"invites_required":' .. string.format('%d', tonumber(c[9])) .. '}}'
elseif mine >= tonumber(c[5]) then
  result = 'already_claimed'
elseif quantity - claimed <= 0 then
  result = 'sold_out'
elseif cap and in_room >= cap then
  result = 'room_cap_reached'
else
  result = 'claimed'
  claimed = redis.call('HINCRBY', KEYS[2], 'claimed', 1)
  in_room = redis.call('HINCRBY', KEYS[3], room, 1)
  redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
  redis.call('HINCRBY', KEYS[5], room .. '\\n' .. ARGV[5] .. '\\n' .. ARGV[4], 1)
end
local remaining = quantity - claimed
if cap then remaining = math.min(remaining, cap - in_room) end
if remaining < 0 then remaining = 0 end
local record = '{"coupon":' .. cjson.encode(ARGV[5]) .. ',"response":{"result":"' .. result ..
               '","remaining":' .. string.format('%d', remaining) .. '}}'
redis.call('SET', KEYS[1], record, 'EX', ARGV[7])
return record
"""

# A deleted room's counts move to its retired name, so a new room with the same id starts at zero.
# KEYS: unique-viewer counts hash, claim figures hash, then each coupon's rooms hash.
# ARGV: room, retired name.
RETIRE_ROOM = """
local room, retired = ARGV[1], ARGV[2]
local function move(key, from, to)
  local n = tonumber(redis.call('HGET', key, from) or '0')
  if n > 0 then
    redis.call('HINCRBY', key, to, n)
    redis.call('HDEL', key, from)
  end
end
move(KEYS[1], room, retired)
local figures = redis.call('HGETALL', KEYS[2])
local prefix = room .. '\\n'
for i = 1, #figures, 2 do
  local field = figures[i]
  if string.sub(field, 1, #prefix) == prefix then
    move(KEYS[2], field, retired .. string.sub(field, #room + 1))
  end
end
for i = 3, #KEYS do
  move(KEYS[i], room, retired)
end
return 1
"""
