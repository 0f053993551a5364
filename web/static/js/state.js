/* state.js — the chat's one state machine. The page is in one of four states (idle: the start
 * screen; waiting: looking for a stranger; chatting; ended: a chat is over and still shown) and
 * every change between them goes through transition(), a table of the allowed moves. An event
 * the table does not allow in the current state, or one about a chat no longer on screen, is
 * ignored: late and repeated events are normal (docs/protocol.md, "Order"). The room and its seq
 * bookkeeping belong to the state, so they are set and reset here and nowhere else.
 * No DOM and no imports: a test can load it on its own. */

export const IDLE = 'idle';
export const WAITING = 'waiting';
export const CHATTING = 'chatting';
export const ENDED = 'ended';
export const STATES = Object.freeze([IDLE, WAITING, CHATTING, ENDED]);

/** event -> { from: to }; a state not listed under an event does not take it.
 *  search           our join or next was acknowledged: we look for a stranger
 *  waiting          the server's `waiting` (its answer to join/next; a chat on screen is newer)
 *  resumed_waiting  a `resumed` snapshot: we are waiting
 *  resumed_idle     a `resumed` snapshot: no chat, no search (the chat on screen is gone)
 *  matched          the server's `matched`: a new chat
 *  resumed_chat     a `resumed` snapshot: we chat in a room (the one on screen or another)
 *  partner_left     the stranger left the chat on screen
 *  leave            our leave (Leave, Cancel) was acknowledged
 *  session_lost     the server knows us as a new user: what we showed is over
 *  change_interests from an ended chat back to the start screen */
export const TABLE = Object.freeze({
  search: { idle: WAITING, chatting: WAITING, ended: WAITING },
  waiting: { idle: WAITING, ended: WAITING },
  resumed_waiting: { idle: WAITING, chatting: WAITING, ended: WAITING },
  resumed_idle: { waiting: IDLE, chatting: ENDED },
  matched: { idle: CHATTING, waiting: CHATTING, chatting: CHATTING, ended: CHATTING },
  resumed_chat: { idle: CHATTING, waiting: CHATTING, chatting: CHATTING, ended: CHATTING },
  partner_left: { chatting: ENDED },
  leave: { waiting: IDLE, chatting: ENDED },
  session_lost: { waiting: ENDED, chatting: ENDED },
  change_interests: { ended: IDLE },
});

const has = (object, key) => Object.prototype.hasOwnProperty.call(object, key);

/** The state `event` leads to from `from`, or null when the event is not allowed there. */
export function transition(from, event) {
  const moves = has(TABLE, event) ? TABLE[event] : null;
  return moves && has(moves, from) ? moves[from] : null;
}

/** A chat: its state, room and seqs. `info` of an event (all optional):
 *  about     the room the event is about (null: no room): ignored while chatting in another
 *  at        a snapshot's time: ignored while chatting in a room paired later (on a Redis
 *            Cluster a `matched` may overtake a snapshot taken before it)
 *  room      the room a chatting event is about; `matched` for the room on screen is a repeat
 *  pairedAt  when that room was paired (`matched.at`, the server's clock): a `matched` paired
 *            before the newest one shown is ignored in every state (on a Redis Cluster two
 *            chats' `matched` come from two shards and may arrive in the wrong order; the late
 *            one is a chat already over)
 *  privateKey, privateExpires  waiting for a friend in the private room of this key (until
 *            then, ms); any other wait, and every other state, has none */
export function createChat() {
  const chat = {
    phase: IDLE,
    room: null,           // the room chatted in now
    roomAt: null,         // when it was paired, if told
    newestAt: null,       // the newest `matched.at` taken, kept when the chat ends
    lastRoom: null,       // the last room, so a report still works after the chat ended
    kind: null,           // the room's kind: 'random' or 'private' (matched.kind)
    privateKey: null,     // while waiting for a friend: the private room's key
    privateExpires: null, // and when it stops working (ms)
    seenSeqs: new Set(),  // seqs shown in this room
    lastSeq: 0,           // every seq up to this one is shown (sent as `since` on reconnect)

    /** Whether a snapshot taken at `at` is older than the chat on screen. */
    isStale(at) {
      return chat.phase === CHATTING && typeof at === 'number' && chat.roomAt !== null
        && at < chat.roomAt;
    },

    /** The state `event` would lead to now, or null when it is to be ignored. */
    next(event, info = {}) {
      const to = transition(chat.phase, event);
      if (to === null) return null;
      if (event === 'matched' && typeof info.pairedAt === 'number' && chat.newestAt !== null
        && info.pairedAt < chat.newestAt) return null;  // overtaken by a newer chat's
      if (chat.phase === CHATTING) {
        if (info.about !== undefined && info.about !== chat.room) return null;  // an older chat's
        if (chat.isStale(info.at)) return null;
        if (event === 'matched' && info.room === chat.room) return null;  // announced again
      }
      return to;
    },

    /** Applies `event`: returns {from, to, newRoom}, or null when it is ignored. */
    fire(event, info = {}) {
      const to = chat.next(event, info);
      if (to === null) return null;
      const from = chat.phase;
      const newRoom = to === CHATTING && info.room !== chat.room;
      if (to !== CHATTING) {
        // a resume must not apply the old room's position to a new room
        chat.room = null;
        chat.roomAt = null;
        resetSeqs();
      } else if (newRoom) {
        chat.room = info.room;
        chat.roomAt = typeof info.pairedAt === 'number' ? info.pairedAt : null;
        chat.lastRoom = info.room;
        resetSeqs();
      }
      const privateWait = to === WAITING && typeof info.privateKey === 'string';
      chat.privateKey = privateWait ? info.privateKey : null;
      chat.privateExpires = privateWait && typeof info.privateExpires === 'number' ? info.privateExpires : null;
      if (newRoom) chat.kind = info.kind === 'private' ? 'private' : 'random';
      if (event === 'matched' && typeof info.pairedAt === 'number') {
        chat.newestAt = Math.max(chat.newestAt ?? info.pairedAt, info.pairedAt);
      }
      chat.phase = to;
      return { from, to, newRoom };
    },

    seen(seq) {
      return chat.seenSeqs.has(seq);
    },

    /** A seq is shown. `since` is the end of the unbroken run 1..n: a message still in flight
     * when the link drops (a gap) is then replayed on resume instead of skipped; repeats are
     * dropped by seq. */
    remember(seq) {
      chat.seenSeqs.add(seq);
      while (chat.seenSeqs.has(chat.lastSeq + 1)) chat.lastSeq += 1;
    },
  };

  function resetSeqs() {
    chat.seenSeqs = new Set();
    chat.lastSeq = 0;
  }

  return chat;
}

/** The page's chat. */
export const chat = createChat();
