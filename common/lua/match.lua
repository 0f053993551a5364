-- Pair waiting users, atomically: nobody is paired twice, with themself, with someone who has a
-- partner already, or with someone whose presence expired. Users sharing an interest go first;
-- others once they have waited `interest_wait` ms; the last partner only when nobody else waits.
-- Never two users one of whom reported the other (a block, lib/moderation.lua), never a banned
-- user: they leave the queue and are told `error {code: banned, until}`.
-- This is the home slot's half: the pair is made (each user's partner and room pointer) and an
-- intent to open the room is left in `opening`, with each user's route (the workers holding
-- their connections). The caller opens the room in its shard next (open.lua publishes
-- `matched`); a matcher killed in between is replaced by whoever finds the intent
-- (common/store.py Store.finish_pending, or a resume that meets the missing room).
-- Returns {room, intent JSON, room, intent JSON, ...} of the pairs made.
-- KEYS (all in the home slot):
local queue = KEYS[1]        -- zset waiting user -> since (ms)
local prefs = KEYS[2]        -- hash user -> interests (JSON)
local partner_key = KEYS[3]  -- hash user -> partner
local room_key = KEYS[4]     -- hash user -> room
local last_key = KEYS[5]     -- hash user -> last partner
local alive = KEYS[6]        -- zset user -> presence deadline (ms)
local workers = KEYS[7]      -- zset web worker -> heartbeat deadline (ms)
local opening = KEYS[8]      -- hash room -> intent to open it in its shard
-- ARGV:
local interest_wait = tonumber(ARGV[1])  -- ms a user with interests waits for a shared one
local batch = tonumber(ARGV[2])          -- waiting users looked at
local FIRST_ROOM, LAST_ROOM = 3, #ARGV  -- ARGV[3 ..]: fresh room ids, one per pair at most
local now = now_ms()
local home = {partner = partner_key, room = room_key, workers = workers, opening = opening}

local entries = redis.call('ZRANGE', queue, 0, batch - 1, 'WITHSCORES')

local users, since = {}, {}
-- who each one is (browser and address hashes), the key of their blocks, and whether they have
-- any: a pair is checked against the blocks only when one of the two has some (a ZSCORE or two)
local who, ident, has_blocks = {}, {}, {}
for i = 1, #entries, 2 do
  local u = entries[i]
  local deadline = tonumber(redis.call('ZSCORE', alive, u))
  if redis.call('HEXISTS', partner_key, u) == 1 or not deadline or deadline <= now then
    redis.call('ZREM', queue, u)
  else
    who[u] = who_of(u)
    local ban = banned_until(who[u], now)
    if ban > 0 then
      -- banned while waiting (or from another tab): out of the queue, and told why
      redis.call('ZREM', queue, u)
      emit_route_json(tag_of(queue), route_of(u, workers, now), EV.error, u,
        '{"code":"banned","message":' .. cjson.encode(BANNED_MESSAGE) .. ',"until":'
        .. string.format('%d', ban) .. '}')
    else
      users[#users + 1] = u
      since[u] = tonumber(entries[i + 1])
      ident[u] = block_ident(u, who[u])
      has_blocks[u] = redis.call('EXISTS', BLOCK_PREFIX .. ident[u]) == 1
    end
  end
end
if #users < 2 then
  return {}
end

local interests, last = {}, {}
for _, u in ipairs(users) do
  local raw = redis.call('HGET', prefs, u)
  local list = raw and cjson.decode(raw) or {}
  interests[u] = list
  last[u] = redis.call('HGET', last_key, u)
end

local function common(a, b)
  local set, out = {}, {}
  for _, x in ipairs(interests[a]) do set[x] = true end
  for _, x in ipairs(interests[b]) do
    if set[x] then out[#out + 1] = x end
  end
  return out
end

-- A report keeps two users apart (in both directions) for BLOCK_TTL.
local function kept_apart(u, v)
  return (has_blocks[u] and blocks(ident[u], v, ident[v], now))
    or (has_blocks[v] and blocks(ident[v], u, ident[u], now))
end

local function patient(u)
  return #interests[u] == 0 or now - since[u] >= interest_wait
end

local taken, made, next_room = {}, {}, FIRST_ROOM
local n = #users
for i = 1, n do
  local u = users[i]
  if not taken[u] and next_room <= LAST_ROOM then
    local best, best_common, fallback, again, again_common
    for j = i + 1, n do
      local v = users[j]
      if not taken[v] and v ~= u and not kept_apart(u, v) then
        local repeat_pair = (last[u] == v) or (last[v] == u)
        local shared = common(u, v)
        if #shared > 0 then
          if not repeat_pair then
            best, best_common = v, shared
            break
          elseif not again then
            again, again_common = v, shared
          end
        elseif patient(u) and patient(v) then
          if not repeat_pair then
            fallback = fallback or v
          elseif not again then
            again, again_common = v, {}
          end
        end
      end
    end
    if not best and fallback then
      best, best_common = fallback, {}
    end
    if not best and again and n == 2 then
      best, best_common = again, again_common
    end
    if best then
      local room = ARGV[next_room]
      next_room = next_room + 1
      taken[u], taken[best] = true, true
      redis.call('ZREM', queue, u, best)
      local intent = pair_users(home, u, best, room, best_common, 'random', since[u],
        since[best], now)
      made[#made + 1] = room
      made[#made + 1] = intent
    end
  end
end
return made
