-- Socket.IO emits from inside a script, so that a state change (or a snapshot of the state) and
-- its event are one atomic step. Each publishes what python-socketio's Redis manager publishes
-- for `emit(event, payload, to=room)` - a JSON object without host_id, so the worker that
-- published it handles it too - but only to the web workers that hold the recipient's
-- connections (directed delivery), on the channel `<tag>:w:<worker>` of the script's own hash
-- tag: a script on a Redis Cluster may publish (SPUBLISH) only in its own slot, and each worker
-- reads its channel of every tag. A chat's events thus come from its shard, in order, on one
-- channel; a user with no connection is sent nothing and gets their state with `resumed`.
-- PUBLISH_CMD ('SPUBLISH' on a cluster, 'PUBLISH' on one Redis), WORKER_CHANNEL_INFIX and
-- USER_ROOM_PREFIX are defined above this file by common/store.py from common/keys.py.
-- tests/test_lua.py checks the format and the routing, tests/test_chat.py the delivery.

-- The hash tag `{...}` a key name starts with: the slot this script runs in.
local function tag_of(key)
  return string.match(key, '^{[^}]*}')
end

local function publish_to(tag, worker, body)
  redis.call(PUBLISH_CMD, tag .. WORKER_CHANNEL_INFIX .. worker, body)
end

local function emit_body(event, to, payload_json)
  return '{"method":"emit","event":' .. cjson.encode(event) .. ',"namespace":"/","room":'
    .. cjson.encode(to) .. ',"data":[' .. payload_json .. ']}'
end

-- To every connection of `user` on the workers of `route` (a JSON list of worker ids; false or
-- nil: nowhere). payload_json: the payload already encoded (cjson would turn an empty list into
-- an object).
local function emit_route_json(tag, route, event, user, payload_json)
  if not route then
    return
  end
  local body = emit_body(event, USER_ROOM_PREFIX .. user, payload_json)
  for _, worker in ipairs(cjson.decode(route)) do
    publish_to(tag, worker, body)
  end
end

local function emit_route(tag, route, event, user, payload)
  emit_route_json(tag, route, event, user, cjson.encode(payload))
end

-- To the one connection `sid`, held by `worker`.
local function emit_sid_json(tag, worker, event, sid, payload_json)
  publish_to(tag, worker, emit_body(event, sid, payload_json))
end

-- Close connection `sid` on `worker` (python-socketio's queued `disconnect`): that worker sends
-- it a Socket.IO DISCONNECT, after every event published to it on this channel before.
local function disconnect_sid(tag, worker, sid)
  publish_to(tag, worker, '{"method":"disconnect","sid":' .. cjson.encode(sid)
    .. ',"namespace":"/"}')
end

-- A JSON list that stays a list when empty (cjson encodes an empty table as an object).
local function json_list(list)
  if #list == 0 then
    return '[]'
  end
  return cjson.encode(list)
end
