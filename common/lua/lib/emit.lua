-- Socket.IO emits from inside a script, so that a state change (or a snapshot of the state) and
-- its event are one atomic step. Each publishes what python-socketio's Redis manager publishes
-- for `emit(event, payload, to=room)` - a JSON object without host_id, so the worker that
-- published it handles it too - but only on the channels of the web workers that hold the
-- recipient's connections (directed delivery): the route is the user's `where` hash, sid ->
-- worker, kept by connect.lua and disconnect.lua. A worker reads its own channel and the shared
-- one (broadcasts such as `stats`), so it decodes only events for its own clients. A user with
-- no connection is sent nothing: they get their state with `resumed` when they come back.
-- Events for one user travel on one channel per worker and reach it in the order they were
-- published; an emit made here is published at the very moment of its change.
-- WORKER_CHANNEL_PREFIX, WHERE_PREFIX and USER_ROOM_PREFIX are defined above this file by
-- common/store.py, from the configuration and common/keys.py. tests/test_lua.py checks the
-- format and the routing, tests/test_chat.py that python-socketio delivers it.

local function publish_to(worker, body)
  redis.call('PUBLISH', WORKER_CHANNEL_PREFIX .. worker, body)
end

local function emit_body(event, to, payload_json)
  return '{"method":"emit","event":' .. cjson.encode(event) .. ',"namespace":"/","room":'
    .. cjson.encode(to) .. ',"data":[' .. payload_json .. ']}'
end

-- payload_json: the payload already encoded (cjson would turn an empty list into an object).
-- To every connection of `user`, on each worker holding one (once per worker).
local function emit_json(event, user, payload_json)
  local workers = redis.call('HVALS', WHERE_PREFIX .. user)
  if #workers == 0 then
    return
  end
  local body = emit_body(event, USER_ROOM_PREFIX .. user, payload_json)
  local done = {}
  for _, worker in ipairs(workers) do
    if not done[worker] then
      done[worker] = true
      publish_to(worker, body)
    end
  end
end

local function emit(event, user, payload)
  emit_json(event, user, cjson.encode(payload))
end

-- To the one connection `sid`, held by `worker`.
local function emit_sid_json(event, sid, worker, payload_json)
  publish_to(worker, emit_body(event, sid, payload_json))
end

-- Close connection `sid` on `worker` (python-socketio's queued `disconnect`): that worker sends
-- it a Socket.IO DISCONNECT, after every event published to it before this one.
local function disconnect_sid(sid, worker)
  publish_to(worker, '{"method":"disconnect","sid":' .. cjson.encode(sid) .. ',"namespace":"/"}')
end
