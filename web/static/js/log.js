/* log.js — the chat log: system notices, message bubbles in seq order, and the stranger's
 * typing indicator under it. Text from the network only ever reaches the page as text nodes
 * (textContent; its http(s) URLs as links built element by element). */
import { chat } from './state.js';
import { ui } from './ui.js';
import { setText } from './i18n.js';
import { clockTime } from './util.js';

const NEAR_BOTTOM_PX = 80;
const PARTNER_TYPING_TTL_MS = 6000;  // hide the partner's indicator after this long without news
const GROUP_GAP_MS = 5 * 60 * 1000;  // a run of messages breaks after this long a pause
const URL_RE = /\bhttps?:\/\/[^\s<>"]+/gi;
// Bidirectional controls (marks, embeddings, overrides, isolates): inside a link's text they
// could make it read as another address ("…/\u202Egpj.exe" shows as "…/exe.jpg").
const BIDI_CONTROLS_RE = /[\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069]/g;
let partnerTypingTimer = 0;

function isNearBottom() {
  const log = ui.log;
  return log.scrollHeight - log.scrollTop - log.clientHeight < NEAR_BOTTOM_PX;
}

export function scrollToBottom() {
  ui.log.scrollTop = ui.log.scrollHeight;
}

/** Empties the log (the outbox goes with it: composer.js forgetOutbox). */
export function clearLog() {
  ui.log.replaceChildren();
  hidePartnerTyping();
  ui.newPill.hidden = true;
}

/** The "New messages" pill: shown when the stranger writes while the user reads further up;
 * gone once they are back at the bottom (by the pill or by scrolling). */
export function bindLog() {
  ui.log.addEventListener('scroll', () => {
    if (!ui.newPill.hidden && isNearBottom()) ui.newPill.hidden = true;
  }, { passive: true });
  ui.newPill.addEventListener('click', () => {
    ui.newPill.hidden = true;
    scrollToBottom();
  });
}

/** A system line in the log; kind is info, good, warn or error. */
export function addNotice(key, vars, kind = 'info') {
  const last = ui.log.lastElementChild;
  if (last && last.classList.contains('notice') && last.dataset.i18n === key && !vars) {
    return last;  // the same notice again (a burst of refusals): once is enough
  }
  const stick = isNearBottom();
  const node = document.createElement('p');
  node.className = `notice notice--${kind}`;
  setText(node, key, vars);
  ui.log.appendChild(node);
  regroup();
  if (stick) scrollToBottom();
  return node;
}

export function setMessageTime(node, ts) {
  const time = node.querySelector('time');
  const { text, iso } = clockTime(ts);
  time.textContent = text;
  time.dateTime = iso;
  node.dataset.ts = String(Date.parse(iso));
  regroup();
}

/** Consecutive messages from one side (no notice between, minutes apart at most) form a run:
 * only the first shows the name and time (the others get msg--cont). Run after every change of
 * the log's order. */
export function regroup() {
  let prev = null;
  for (const node of ui.log.children) {
    if (!node.classList.contains('msg')) {
      prev = null;
      continue;
    }
    const side = node.classList.contains('msg--mine');
    const cont = prev !== null && prev.side === side
      && Math.abs(Number(node.dataset.ts) - prev.ts) <= GROUP_GAP_MS;
    node.classList.toggle('msg--cont', cont);
    if (!cont) prev = { side, ts: Number(node.dataset.ts) };
  }
}

/** Fills `parent` with `text`, its http(s) URLs as links that open in a new tab and tell the
 * site nothing. Built from text nodes and elements: message text never goes through HTML. */
function fillWithLinks(parent, text) {
  let at = 0;
  for (const match of text.matchAll(URL_RE)) {
    let raw = match[0];
    // trailing punctuation belongs to the sentence (a ")" only when it closes nothing)
    for (;;) {
      const last = raw.slice(-1);
      const opens = (raw.match(/\(/g) || []).length;
      const closes = (raw.match(/\)/g) || []).length;
      if (/[.,;:!?'"\]}>]/.test(last) || (last === ')' && closes > opens)) raw = raw.slice(0, -1);
      else break;
    }
    const url = safeUrl(raw);
    if (!url) continue;
    if (match.index > at) parent.append(text.slice(at, match.index));
    const link = document.createElement('a');
    link.className = 'msg__link';
    link.href = url;
    link.target = '_blank';
    link.rel = 'noopener noreferrer nofollow';
    // an address reads left to right, isolated from the text around it (dir implies
    // unicode-bidi: isolate), and without the controls that would reorder it
    link.dir = 'ltr';
    link.textContent = raw.replace(BIDI_CONTROLS_RE, '');
    parent.append(link);
    at = match.index + raw.length;
  }
  if (at < text.length) parent.append(text.slice(at));
}

function safeUrl(raw) {
  try {
    const url = new URL(raw);
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.hostname ? url.href : null;
  } catch (e) {
    return null;
  }
}

function buildMessage(mine, text, ts) {
  const node = document.createElement('div');
  node.className = `msg ${mine ? 'msg--mine' : 'msg--theirs'}`;
  const meta = document.createElement('p');
  meta.className = 'msg__meta';
  const who = document.createElement('span');
  who.className = 'msg__who';
  setText(who, mine ? 'you' : 'stranger');
  meta.append(who, document.createElement('time'));
  const bubble = document.createElement('p');
  bubble.className = 'msg__bubble';
  bubble.dir = 'auto';  // a right-to-left message reads right to left
  fillWithLinks(bubble, text);  // network text: text nodes only
  node.append(meta, bubble);
  setMessageTime(node, ts);
  return node;
}

/** Puts a message node in seq order (nodes without a seq yet stay where they are). */
function insertBySeq(node, seq) {
  if (seq !== null) {
    for (const other of ui.log.querySelectorAll('.msg[data-seq]')) {
      if (Number(other.dataset.seq) > seq) {
        ui.log.insertBefore(node, other);
        return;
      }
    }
  }
  ui.log.appendChild(node);
}

/** An own message got its seq from the ack: moves it to its seq place among the messages that
 * have one, so both people see the same order (the server may order a quick burst otherwise
 * than it was typed). Pending messages and notices keep their places. */
export function placeBySeq(node, seq) {
  let higher = null;
  let lastLower = null;
  for (const other of ui.log.querySelectorAll('.msg[data-seq]')) {
    if (other === node) continue;
    const otherSeq = Number(other.dataset.seq);
    if (otherSeq > seq && !higher) higher = other;
    if (otherSeq < seq) lastLower = other;
  }
  const follows = (x) => Boolean(node.compareDocumentPosition(x) & Node.DOCUMENT_POSITION_FOLLOWING);
  if (higher && !follows(higher)) ui.log.insertBefore(node, higher);
  else if (lastLower && follows(lastLower)) lastLower.after(node);
  regroup();
}

/** Shows a message; returns its node. `seq` null means not yet acknowledged. */
export function showMessage({ mine, text, ts, seq }) {
  const stick = mine || isNearBottom();
  const node = buildMessage(mine, text, ts);
  if (seq !== null) {
    node.dataset.seq = String(seq);
    chat.remember(seq);
  }
  insertBySeq(node, seq);
  regroup();
  if (stick) scrollToBottom();
  else if (!mine) ui.newPill.hidden = false;
  return node;
}

export function showPartnerTyping() {
  const stick = isNearBottom();
  ui.typing.hidden = false;  // the log gets shorter: keep its last message in sight
  if (stick) scrollToBottom();
  clearTimeout(partnerTypingTimer);
  partnerTypingTimer = setTimeout(hidePartnerTyping, PARTNER_TYPING_TTL_MS);
}

export function hidePartnerTyping() {
  clearTimeout(partnerTypingTimer);
  ui.typing.hidden = true;
}
