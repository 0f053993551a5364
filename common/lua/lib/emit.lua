-- Socket.IO emits from inside a script, so that a state change (or a snapshot of the state) and
-- its event are one atomic step. Each publishes what python-socketio's Redis manager publishes
-- for `emit(event, payload, to=room)`: a JSON object on the Socket.IO channel (no host_id, so
-- every worker handles it, the publishing one included). All emits of the chat travel on this
-- one channel and reach every worker in the order they were published; an emit made here is
-- published at the very moment of its change (matched and partner_left are published just
-- after theirs, by the matcher and the web worker).
-- EMIT_CHANNEL and USER_ROOM_PREFIX are defined above this file by common/store.py, from the
-- configuration and common/keys.py. tests/test_lua.py checks the format, tests/test_chat.py
-- that python-socketio delivers it.

-- payload_json: the payload already encoded (cjson would turn an empty list into an object)
local function emit_json(event, room, payload_json)
  redis.call('PUBLISH', EMIT_CHANNEL, '{"method":"emit","event":' .. cjson.encode(event)
    .. ',"namespace":"/","room":' .. cjson.encode(room) .. ',"data":[' .. payload_json .. ']}')
end

-- to every connection of `user`
local function emit(event, user, payload)
  emit_json(event, USER_ROOM_PREFIX .. user, cjson.encode(payload))
end

-- Close connection `sid` wherever it is (python-socketio's queued `disconnect`): its worker
-- sends it a Socket.IO DISCONNECT, after every event published before this one.
local function disconnect_sid(sid)
  redis.call('PUBLISH', EMIT_CHANNEL, '{"method":"disconnect","sid":' .. cjson.encode(sid)
    .. ',"namespace":"/"}')
end
