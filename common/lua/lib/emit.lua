-- emit(event, user, payload): send a Socket.IO event to every connection of `user`, on whichever
-- web worker holds it, from inside a script, so that a state change and its event are one atomic
-- step and one round trip. It publishes what python-socketio's Redis manager publishes for
-- `emit(event, payload, to=user_room(user))`: a JSON object on the Socket.IO channel (no
-- host_id, so every worker handles it, the publishing one included). EMIT_CHANNEL and
-- USER_ROOM_PREFIX are defined above this file by common/store.py, from the configuration and
-- common/keys.py. tests/test_chat.py fails if a python-socketio update changes the format.
local function emit(event, user, payload)
  redis.call('PUBLISH', EMIT_CHANNEL, cjson.encode({
    method = 'emit', event = event, data = {payload}, namespace = '/',
    room = USER_ROOM_PREFIX .. user}))
end
