-- A resuming connection's `resumed`: a snapshot of the user's state (idle, waiting, or chatting
-- with the room's messages after `since`), emitted to that connection from inside the script.
-- Published on the Socket.IO channel like every chat event, it reaches the client in the order
-- of the changes: a `partner_left` or `matched` from a change after the snapshot arrives after
-- it, never before (a `resumed` sent directly could be overtaken and revive an ended chat).
-- KEYS: 1 partner, 2 room, 3 queue, 4 room_info, 5 sent:<user>, 6 sent:<expected partner>,
--       7 away
-- A chatting snapshot says whether the partner is away now (`partner_away`), so a client that
-- missed `partner_away`/`partner_back` while it was itself disconnected shows the truth.
-- ARGV: 1 user, 2 expected partner ('' if none), 3 since, 4 the connection's sid, 5 the worker
--       holding it (the caller)
-- Returns the state emitted, or 'retry' when the partner is no longer the expected one (the
-- caller read it just before, to name its sent list in KEYS; it changed in between).
local partner_key, room_key, queue, room_info, sent_mine, sent_theirs, away = KEYS[1], KEYS[2],
  KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local user, expected, since, sid, worker = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]

local partner = redis.call('HGET', partner_key, user)
if (partner or '') ~= expected then
  return 'retry'
end
local room = redis.call('HGET', room_key, user)
if partner and room then
  local items = {}
  for i, key in ipairs({sent_mine, sent_theirs}) do
    for _, raw in ipairs(redis.call('LRANGE', key, 0, -1)) do
      local m = cjson.decode(raw)
      if m.room == room and m.seq > since then
        table.insert(items, {id = m.id, seq = m.seq, text = m.text, ts = m.ts, mine = i == 1})
      end
    end
  end
  table.sort(items, function(a, b) return a.seq < b.seq end)
  local history = {}
  for i, m in ipairs(items) do
    history[i] = cjson.encode(m)
  end
  local interests = '[]'
  local info = redis.call('HGET', room_info, room)
  if info then
    local shared = cjson.decode(info).interests
    if shared and #shared > 0 then
      interests = cjson.encode(shared)
    end
  end
  local away = redis.call('ZSCORE', away, partner) and 'true' or 'false'
  emit_sid_json(EV.resumed, sid, worker, '{"state":"chatting","room":' .. cjson.encode(room)
    .. ',"interests":' .. interests .. ',"partner_away":' .. away
    .. ',"history":[' .. table.concat(history, ',') .. ']}')
  return 'chatting'
end
local state = redis.call('ZSCORE', queue, user) and 'waiting' or 'idle'
emit_sid_json(EV.resumed, sid, worker, '{"state":"' .. state .. '"}')
return state
