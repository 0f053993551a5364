"""The matcher daemon: pairs waiting users, ends the chats of users gone past the grace period,
and emits the resulting events through the Socket.IO message queue."""
