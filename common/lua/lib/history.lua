-- Append an entry (field, value, ...) to a history stream for the archiver, capped at about
-- `maxlen` entries while no archiver drains it.
local function append_history(stream, maxlen, ...)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', ...)
end
