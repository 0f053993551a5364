/* flags.js — the page's plain flags that several modules read and write: the connection's and
 * the view's. (The chat itself, its state, room and seqs, is state.js's machine.) */

export const flags = {
  booted: false,          // false while a reload waits to learn whether it resumes a chat
  busy: false,            // a join/next/leave/report waits for its ack
  partnerAway: false,     // the stranger's connection dropped; they may still come back
  reportedRoom: null,     // the room last reported, so it is not reported twice
  user: null,
  everConnected: false,
  offlineNoticed: false,  // a "reconnecting" notice is in the log, "reconnected" is owed
  lostNotice: null,       // that notice's node
  refusals: 0,            // connection attempts refused by the server in a row
  replaced: false,        // another tab took this chat over: stay off until "Use here"
  drainUntil: 0,          // the worker asked us to move: until then, a quiet reconnect is under way
  drainTries: 0,          // immediate retries spent on that move
  pendingRoom: null,      // the key of a /?room=KEY link, joined once connected
  netOffline: navigator.onLine === false,  // the browser says there is no network
  bannedUntil: 0,         // banned (ms since the epoch): the banned view, no connection, no start
};
