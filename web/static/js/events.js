/* events.js — the server's chat events (docs/protocol.md): snapshots (`resumed`), `waiting`,
 * `matched`, messages, typing and the stranger's presence. Each one names its room; what is
 * about a chat no longer on screen, or already shown (by seq), is ignored. State changes go
 * through flow.js to the state machine. */
import { chat, CHATTING } from './state.js';
import { flags } from './flags.js';
import { noteLeft, noteMessage } from './attention.js';
import {
  addNotice, hidePartnerTyping, scrollToBottom, showMessage, showPartnerTyping,
} from './log.js';
import { finishBoot, renderStatus, setOnline } from './view.js';
import { markSent, outbox } from './composer.js';
import { endChat, enterChat, enterWaiting, refreshChat, resumeChat, resumeIdle } from './flow.js';
import { toSeq } from './util.js';

const LEAVE_REASONS = new Set(['next', 'left', 'disconnected']);

export function onResumed(data) {
  if (!data || typeof data !== 'object') return;
  // On a Redis Cluster a `matched` may overtake a snapshot taken before it (they come from
  // two shards): a "waiting"/"idle" older than the chat on screen is not news.
  if (data.state !== 'chatting' && chat.isStale(data.at)) return;
  if (data.state === 'chatting' && typeof data.room === 'string') showSnapshot(data);
  else if (data.state === 'waiting') enterWaiting('resumed_waiting', privateWait(data));
  else resumeIdle(data.at);
  finishBoot();
}

/** A waiting snapshot's info: a host waiting for a friend gets their key back on screen. */
function privateWait(data) {
  const info = { at: data.at };
  const p = data.private;
  if (p && typeof p === 'object' && typeof p.key === 'string') {
    info.privateKey = p.key;
    info.privateExpires = p.expires;
  }
  return info;
}

function showSnapshot(data) {
  if (data.room !== chat.room) resumeChat(data.room, data.interests, data.kind);
  else refreshChat(data.room);
  if (typeof data.partner_away === 'boolean') {  // told by servers that know it
    flags.partnerAway = data.partner_away;
    renderStatus();
  }
  const history = Array.isArray(data.history) ? data.history.slice() : [];
  history.sort((a, b) => (toSeq(a && a.seq) || 0) - (toSeq(b && b.seq) || 0));
  history.forEach(showHistoryEntry);
  scrollToBottom();
}

function showHistoryEntry(item) {
  if (!item || typeof item !== 'object') return;
  const seq = toSeq(item.seq);
  if (seq !== null && chat.seen(seq)) return;
  const entry = item.mine ? outbox.get(item.id) : undefined;
  if (entry && entry.room === chat.room) {
    markSent(entry, item);  // our pending message did arrive before the link dropped
    return;
  }
  showMessage({ mine: Boolean(item.mine), text: String(item.text ?? ''), ts: item.ts, seq });
}

/** `waiting` answers our own join/next, whose ack enters the waiting state as well. The
 * `matched` that follows comes from the matcher by another path and can overtake it: a
 * `waiting` that finds a chat on screen is stale and must not wipe that chat (state.js). */
export function onWaiting(data) {
  if (data) setOnline(data.online);
  enterWaiting('waiting');
}

export function onMatched(data) {
  if (!data || typeof data.room !== 'string') return;
  enterChat('matched', data.room, data.interests, data.at, data.kind);  // a repeat is ignored (state.js)
}

export function onMessage(data) {
  if (!data || chat.phase !== CHATTING) return;
  if (data.room !== undefined && data.room !== chat.room) return;
  const seq = toSeq(data.seq);
  if (seq !== null && chat.seen(seq)) return;
  hidePartnerTyping();
  partnerReturned();  // a message is proof enough, even if `partner_back` went astray
  showMessage({ mine: false, text: String(data.text ?? ''), ts: data.ts, seq });
  noteMessage();
}

export function onTyping(data) {
  if (chat.phase !== CHATTING) return;
  if (data && typeof data.room === 'string' && data.room !== chat.room) return;  // a late one
  if (data && data.typing) {
    partnerReturned();
    showPartnerTyping();
  } else {
    hidePartnerTyping();
  }
}

/** Whether a presence event is about the chat on screen (late ones name an older room). */
function aboutThisChat(data) {
  return chat.phase === CHATTING && Boolean(data) && typeof data.room === 'string'
    && data.room === chat.room;
}

export function onPartnerAway(data) {
  if (!aboutThisChat(data)) return;
  hidePartnerTyping();
  if (flags.partnerAway) return;
  // the chat stays open and the composer usable: the server keeps messages for them
  flags.partnerAway = true;
  renderStatus();
  addNotice('notice_partner_away', null, 'warn');
}

export function onPartnerBack(data) {
  if (aboutThisChat(data)) partnerReturned();
}

function partnerReturned() {
  if (!flags.partnerAway) return;
  flags.partnerAway = false;
  renderStatus();
  addNotice('notice_partner_back', null, 'good');
}

/** A late notice about the previous chat must not end the one that has just begun. */
export function onPartnerLeft(data) {
  const about = data && typeof data.room === 'string' ? data.room : undefined;
  const reason = data && LEAVE_REASONS.has(data.reason) ? data.reason : 'left';
  if (endChat('partner_left', { about }, `notice_partner_${reason}`, 'warn')) noteLeft();
}
