/* log.js — the chat log: system notices, message bubbles in seq order, and the stranger's
 * typing indicator under it. Text from the network only ever reaches the page through
 * textContent. */
import { chat } from './state.js';
import { ui } from './ui.js';
import { setText } from './i18n.js';
import { clockTime } from './util.js';

const NEAR_BOTTOM_PX = 80;
const PARTNER_TYPING_TTL_MS = 6000;  // hide the partner's indicator after this long without news
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
  if (stick) scrollToBottom();
  return node;
}

export function setMessageTime(node, ts) {
  const time = node.querySelector('time');
  const { text, iso } = clockTime(ts);
  time.textContent = text;
  time.dateTime = iso;
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
  bubble.textContent = text;  // network text: textContent only
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
  if (stick) scrollToBottom();
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
