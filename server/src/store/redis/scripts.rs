//! The Lua scripts: each touches one topic's keys only (they share its hash tag), and Redis
//! runs a script alone, so every append, read and inbox change is one atomic step.
//!
//! Keys per topic (`{t}` is the hash tag): `m` a hash (`e` epoch, `s` top offset, and for an
//! inbox `u` unread, `q` change counter), `l` a stream whose entry ids are `<offset>-0` with
//! fields `t` (time, ms) and `d` (the notification without topic, epoch and offset), `s` the
//! inbox's read state (offset -> 1 read, 2 archived, 3 both; absent: unread), `i:<key>` an
//! idempotency key. Every script gets the node's epoch (from the Redis server's run and
//! replication ids): a topic whose stored epoch differs takes it, keeping its top offset, so
//! offsets go on from what Redis kept and (epoch, offset) is never reused.

/// Shared head of every script: `epoch_of()` -> epoch, top (after a switch to ARGV[1]).
const PRELUDE: &str = r#"
local function epoch_of(meta, epoch, write)
  local m = redis.call('HMGET', meta, 'e', 's')
  local top = tonumber(m[2] or '0')
  if m[1] ~= epoch and write then
    redis.call('HSET', meta, 'e', epoch, 's', top)
  end
  return epoch, top
end
local function first_of(log, top)
  local f = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
  if #f == 0 then return top + 1 end
  return tonumber(string.match(f[1][1], '^(%d+)'))
end
-- An integer as a string: Lua 5.1 formats every number it turns into a string (concatenation,
-- tostring, a redis.call argument) with '%.14g', a floating-point conversion that cost 8% of
-- Redis's time in the append script; '%d' is half the cost of tostring.
local function int(n)
  return string.format('%d', n)
end
local function unread_of(state, off)
  return redis.call('HEXISTS', state, off) == 0
end
"#;

/// Appends a batch of notifications to one topic, in order.
/// KEYS: meta, log, state, then one idempotency key per notification. ARGV: epoch, max_count,
/// channel, inbox (1/0), then per notification: time, entry, idem_ttl_ms (0: no key).
/// Returns five values per notification: {'1', epoch, offset, unread, seq} for a new one (the
/// caller has the rest), {'0', message, '', '', ''} for a repeated idempotency key; message =
/// "epoch:offset:unread:seq:entry", as published on the channel. A topic's stream is trimmed
/// to max_count once, after the batch; an inbox's on every append (what each append drops
/// changes the unread count that append reports).
pub const APPEND: &str = r#"
local meta, log, state = KEYS[1], KEYS[2], KEYS[3]
local epoch, top = epoch_of(meta, ARGV[1], true)
local maxc, channel, inbox = tonumber(ARGV[2]), ARGV[3], ARGV[4] == '1'
local unread, seq = 0, 0
if inbox then
  unread = tonumber(redis.call('HGET', meta, 'u') or '0')
  seq = tonumber(redis.call('HGET', meta, 'q') or '0')
end
local out = {}
for i = 1, (#ARGV - 4) / 3 do
  local time, entry, ttl = ARGV[3 * i + 2], ARGV[3 * i + 3], ARGV[3 * i + 4]
  local idem, keyed = KEYS[3 + i], ttl ~= '0'
  local prev = false
  if keyed then prev = redis.call('GET', idem) end
  if prev then
    out[#out + 1] = '0'; out[#out + 1] = prev
    out[#out + 1] = ''; out[#out + 1] = ''; out[#out + 1] = ''
  else
    top = top + 1
    local off = int(top)
    local u, q = '', ''
    if inbox then
      local len = redis.call('XLEN', log)
      if len >= maxc then
        -- What the trim below drops leaves the count.
        for _, e in ipairs(redis.call('XRANGE', log, '-', '+', 'COUNT', int(len - maxc + 1))) do
          local dropped = string.match(e[1], '^(%d+)')
          if unread_of(state, dropped) then
            unread = unread - 1
            seq = seq + 1
          end
          redis.call('HDEL', state, dropped)
        end
      end
      unread = unread + 1
      seq = seq + 1
      u, q = int(unread), int(seq)
      redis.call('XADD', log, 'MAXLEN', ARGV[2], off .. '-0', 't', time, 'd', entry)
    else
      redis.call('XADD', log, off .. '-0', 't', time, 'd', entry)
    end
    local msg = epoch .. ':' .. off .. ':' .. u .. ':' .. q .. ':' .. entry
    redis.call('PUBLISH', channel, msg)
    if keyed then redis.call('SET', idem, msg, 'PX', ttl) end
    out[#out + 1] = '1'; out[#out + 1] = epoch; out[#out + 1] = off
    out[#out + 1] = u; out[#out + 1] = q
  end
end
redis.call('HSET', meta, 's', int(top))
if inbox then
  redis.call('HSET', meta, 'u', int(unread), 'q', int(seq))
else
  -- One exact trim for the whole batch: trimming on every XADD scans the stream's first node
  -- each time (twice the cost of the append). Nobody sees the stream between the two.
  redis.call('XTRIM', log, 'MAXLEN', ARGV[2])
end
return out
"#;

/// KEYS: meta, log. ARGV: epoch, lo (inclusive), hi (inclusive), limit (0: position only),
/// newest_first (1/0). Returns {epoch, top, first, offset1, entry1, offset2, entry2, ...}.
pub const READ: &str = r#"
local meta, log = KEYS[1], KEYS[2]
local epoch, top = epoch_of(meta, ARGV[1], false)
local out = {epoch, tostring(top), tostring(first_of(log, top))}
local limit = tonumber(ARGV[4])
if limit > 0 then
  local items
  if ARGV[5] == '1' then
    items = redis.call('XREVRANGE', log, ARGV[3], ARGV[2], 'COUNT', limit)
  else
    items = redis.call('XRANGE', log, ARGV[2], ARGV[3], 'COUNT', limit)
  end
  for _, e in ipairs(items) do
    out[#out + 1] = string.match(e[1], '^(%d+)')
    out[#out + 1] = e[2][4]
  end
end
return out
"#;

/// KEYS: meta, log, state. ARGV: epoch, op (read, unread, archive, unarchive, read_all),
/// then the offsets (or up_to for read_all). Returns {changed, unread, seq}.
pub const INBOX_UPDATE: &str = r#"
local meta, log, state = KEYS[1], KEYS[2], KEYS[3]
local _, top = epoch_of(meta, ARGV[1], true)
local first = first_of(log, top)
local op = ARGV[2]
local changed, delta = 0, 0
local function change(off)
  if off < first or off > top then return end
  local st = tonumber(redis.call('HGET', state, off) or '0')
  local r, a = st % 2 == 1, st >= 2
  local nr, na = r, a
  if op == 'read' then nr = true
  elseif op == 'unread' then nr = false
  elseif op == 'archive' then na = true
  elseif op == 'unarchive' then na = false
  elseif op == 'read_all' then if not a then nr = true end
  end
  if nr ~= r or na ~= a then
    changed = changed + 1
    local was = (not r and not a) and 1 or 0
    local now = (not nr and not na) and 1 or 0
    delta = delta + now - was
    local ns = (nr and 1 or 0) + (na and 2 or 0)
    if ns == 0 then redis.call('HDEL', state, off) else redis.call('HSET', state, off, ns) end
  end
end
if op == 'read_all' then
  local up_to = math.min(tonumber(ARGV[3]), top)
  for off = first, up_to do change(off) end
else
  local seen = {}
  for i = 3, #ARGV do
    local off = tonumber(ARGV[i])
    if not seen[off] then
      seen[off] = true
      change(off)
    end
  end
end
local unread = tonumber(redis.call('HGET', meta, 'u') or '0')
local seq = tonumber(redis.call('HGET', meta, 'q') or '0')
if changed > 0 then
  unread = math.max(0, unread + delta)
  seq = seq + 1
  redis.call('HSET', meta, 'u', unread, 'q', seq)
end
return {changed, unread, seq}
"#;

/// KEYS: meta, log, state. ARGV: epoch, before (inclusive upper offset), filter (unread, all,
/// archived), category ('' for any), limit. Newest first. Returns {epoch, unread, seq,
/// offset1, state1, entry1, ...}.
pub const INBOX_LIST: &str = r#"
local meta, log, state = KEYS[1], KEYS[2], KEYS[3]
local epoch = epoch_of(meta, ARGV[1], false)
local unread = redis.call('HGET', meta, 'u') or '0'
local seq = redis.call('HGET', meta, 'q') or '0'
local out = {epoch, unread, seq}
local filter, category, limit = ARGV[3], ARGV[4], tonumber(ARGV[5])
local hi = ARGV[2]
local found = 0
while found < limit do
  local page = redis.call('XREVRANGE', log, hi, '-', 'COUNT', 200)
  if #page == 0 then break end
  local last
  for _, e in ipairs(page) do
    local off = string.match(e[1], '^(%d+)')
    last = tonumber(off)
    local st = tonumber(redis.call('HGET', state, off) or '0')
    local r, a = st % 2 == 1, st >= 2
    local ok
    if filter == 'unread' then ok = not r and not a
    elseif filter == 'archived' then ok = a
    else ok = not a end
    if ok and category ~= '' then
      local d = cjson.decode(e[2][4])
      ok = d.category == category
    end
    if ok then
      out[#out + 1] = off
      out[#out + 1] = tostring(st)
      out[#out + 1] = e[2][4]
      found = found + 1
      if found >= limit then break end
    end
  end
  if last == nil or last <= 1 then break end
  hi = tostring(last - 1)
end
return out
"#;

/// KEYS: meta, log, state. ARGV: cutoff time (ms), most to drop, inbox (1/0). Drops the
/// oldest notifications older than the cutoff. Returns how many it dropped.
pub const PRUNE: &str = r#"
local meta, log, state = KEYS[1], KEYS[2], KEYS[3]
local cutoff, most = tonumber(ARGV[1]), tonumber(ARGV[2])
local dropped, unread_gone = 0, 0
for _, e in ipairs(redis.call('XRANGE', log, '-', '+', 'COUNT', most)) do
  if tonumber(e[2][2]) >= cutoff then break end
  local off = string.match(e[1], '^(%d+)')
  if ARGV[3] == '1' then
    if unread_of(state, off) then unread_gone = unread_gone + 1 end
    redis.call('HDEL', state, off)
  end
  redis.call('XDEL', log, e[1])
  dropped = dropped + 1
end
if unread_gone > 0 then
  local unread = tonumber(redis.call('HGET', meta, 'u') or '0')
  local seq = tonumber(redis.call('HGET', meta, 'q') or '0')
  redis.call('HSET', meta, 'u', math.max(0, unread - unread_gone), 'q', seq + unread_gone)
end
return dropped
"#;

/// Each script with the prelude.
pub fn full(body: &str) -> String {
    format!("{PRELUDE}{body}")
}
