/* composer.js — what the user writes: sending messages (the outbox: each message has an id,
 * stays pending until acked, is resent with the same id after a reconnect), the typing signal
 * sent to the stranger, and the composer's own input (counter, Enter to send). */
import { chat, CHATTING } from './state.js';
import { ui, MAX_LEN } from './ui.js';
import { setText, setAttrText } from './i18n.js';
import { showMessage, setMessageTime, placeBySeq, regroup } from './log.js';
import { showComposerNotice, hideComposerNotice, notifyError } from './view.js';
import { isOnline, request } from './connection.js';
import { codePoints, newId, noop, toSeq } from './util.js';

const TYPING_REPEAT_MS = 2000;  // send typing:true at most this often
const TYPING_IDLE_MS = 3000;    // send typing:false after this long without a keystroke
const RETRYABLE = new Set(['timeout', 'offline', 'rate_limited', 'unavailable', 'internal']);

/** id -> {id, text, room, ts, status: 'pending'|'failed', attempts, node} */
export const outbox = new Map();
const typingOut = { on: false, sentAt: 0 };
let typingIdleTimer = 0;

// ---------------------------------------------------------------- sending messages

function setMessageStatus(entry, status, code) {
  entry.status = status;
  const { node } = entry;
  const meta = node.querySelector('.msg__meta');
  node.classList.toggle('is-pending', status === 'pending');
  node.classList.toggle('is-failed', status === 'failed');
  meta.querySelectorAll('.msg__state, .msg__retry').forEach((n) => n.remove());
  if (status === 'sent') return;
  const label = document.createElement('span');
  label.className = 'msg__state';
  setText(label, status === 'pending' ? 'msg_sending' : 'msg_failed');
  meta.appendChild(label);
  if (status === 'failed' && RETRYABLE.has(code)) {
    const retry = document.createElement('button');
    retry.type = 'button';
    retry.className = 'msg__retry';
    setText(retry, 'msg_retry');
    setAttrText(retry, 'aria-label', 'msg_retry_label');
    retry.addEventListener('click', () => retryMessage(entry));
    meta.appendChild(retry);
  }
}

function sendFromComposer() {
  const raw = ui.input.value;
  const length = codePoints(raw);
  if (!raw.trim()) {
    showComposerNotice('local_empty');
    return;
  }
  if (length > MAX_LEN) {
    showComposerNotice('local_too_long', { n: length, max: MAX_LEN });
    return;
  }
  if (chat.phase !== CHATTING) {
    showComposerNotice('error_not_chatting');
    return;
  }
  const entry = {
    id: newId(), text: raw.trim(), room: chat.room, ts: Date.now(), status: 'pending', attempts: 0, node: null,
  };
  entry.node = showMessage({ mine: true, text: entry.text, ts: entry.ts, seq: null });
  setMessageStatus(entry, 'pending');
  outbox.set(entry.id, entry);
  ui.input.value = '';
  onComposerChanged();
  stopTyping(true);
  transmit(entry);
}

/** Emits a message; while offline it stays pending and goes out after the next hello. */
function transmit(entry) {
  if (!isOnline()) return;
  entry.attempts += 1;
  const attempt = entry.attempts;
  request('message', { id: entry.id, text: entry.text }, (res) => {
    if (outbox.get(entry.id) !== entry) return;  // settled already
    if (res.ok) {
      markSent(entry, res);
    } else if (res.code === 'offline' || res.code === 'replaced' || attempt !== entry.attempts) {
      // the link dropped or went to another tab (it is resent with the same id after the
      // next hello) or a newer try is out
    } else if (res.code === 'filtered') {
      returnFiltered(entry);
    } else {
      failMessage(entry, res.code);
    }
  });
}

export function markSent(entry, ack) {
  const seq = toSeq(ack.seq);
  if (seq !== null && entry.room === chat.room) {
    entry.node.dataset.seq = String(seq);
    chat.remember(seq);
    if (entry.node.isConnected) placeBySeq(entry.node, seq);
  }
  if (ack.ts !== undefined) setMessageTime(entry.node, ack.ts);
  setMessageStatus(entry, 'sent');
  outbox.delete(entry.id);
}

function failMessage(entry, code) {
  setMessageStatus(entry, 'failed', code);
  const stale = code === 'not_chatting' && (chat.phase !== CHATTING || entry.room !== chat.room);
  if (!stale) notifyError(code);
}

/** The word and link filter refused it: nothing was sent, so it leaves the log and goes back
 * into the composer to be edited (unless the user is already writing something else: then it
 * stays in the log as not sent). The notice sits under the composer, where they look. */
function returnFiltered(entry) {
  outbox.delete(entry.id);
  if (ui.input.value.trim()) {
    setMessageStatus(entry, 'failed', 'filtered');
  } else {
    entry.node.remove();
    regroup();
    ui.input.value = entry.text;
    onComposerChanged();
  }
  showComposerNotice('error_filtered', null, true);
}

function retryMessage(entry) {
  if (chat.phase !== CHATTING || entry.room !== chat.room) {
    notifyError('not_chatting');
    return;
  }
  setMessageStatus(entry, 'pending');
  ui.input.focus();
  transmit(entry);
}

/** After a reconnect: resend what is still pending in this chat, with the same ids. */
export function resendOutbox() {
  for (const entry of outbox.values()) {
    if (entry.status !== 'pending') continue;
    if (chat.phase === CHATTING && entry.room === chat.room) transmit(entry);
    else failMessage(entry, 'not_chatting');
  }
}

// ---------------------------------------------------------------- typing

function noteTyping() {
  if (chat.phase !== CHATTING || !isOnline()) return;
  if (!ui.input.value) {
    stopTyping();
    return;
  }
  const now = Date.now();
  // a new burst of typing is told at once; while it goes on, repeated now and then
  if (!typingOut.on || now - typingOut.sentAt >= TYPING_REPEAT_MS) {
    typingOut.on = true;
    typingOut.sentAt = now;
    request('typing', { typing: true }, noop);
  }
  clearTimeout(typingIdleTimer);
  typingIdleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
}

/** quiet: the message being sent hides the partner's indicator by itself; say nothing. */
export function stopTyping(quiet = false) {
  clearTimeout(typingIdleTimer);
  if (!typingOut.on) return;
  typingOut.on = false;
  if (!quiet && chat.phase === CHATTING && isOnline()) request('typing', { typing: false }, noop);
}

/** The link is gone: the server forgets our typing with it. */
export function forgetTyping() {
  typingOut.on = false;
  clearTimeout(typingIdleTimer);
}

// ---------------------------------------------------------------- composer

export function onComposerChanged() {
  const length = codePoints(ui.input.value);
  const over = length > MAX_LEN;
  setText(ui.charCount, 'char_count', { n: length, max: MAX_LEN });
  ui.charCount.classList.toggle('is-over', over);
  ui.input.setAttribute('aria-invalid', String(over));
  autosize();
}

function autosize() {
  ui.input.style.height = 'auto';
  ui.input.style.height = `${Math.min(ui.input.scrollHeight + 2, 160)}px`;
}

function onComposerInput() {
  hideComposerNotice();
  onComposerChanged();
  noteTyping();
}

function onComposerKeydown(event) {
  if (event.key !== 'Enter' || event.shiftKey || event.isComposing || event.keyCode === 229) return;
  event.preventDefault();
  sendFromComposer();
}

export function bindComposer() {
  ui.composer.addEventListener('submit', (event) => {
    event.preventDefault();
    sendFromComposer();
    ui.input.focus();
  });
  ui.input.addEventListener('input', onComposerInput);
  ui.input.addEventListener('keydown', onComposerKeydown);
  onComposerChanged();
}
