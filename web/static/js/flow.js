/* flow.js — the chat flow: what the user asks for (Start, Next, Leave, Cancel, Report, Change
 * interests) and what the page does on each change of state. A change is decided by the state
 * machine (state.js) and only then shown here: a clean log and "Looking for a stranger" when
 * waiting starts, the matched notice and focus when a chat starts, the closing notice when it
 * ends. */
import { chat, WAITING, CHATTING } from './state.js';
import { flags } from './flags.js';
import { ui } from './ui.js';
import { addNotice, clearLog } from './log.js';
import {
  ensureFocus, hideComposerNotice, hideStartError, notifyError, renderControls, renderPhase,
  setBusy, showComposerNotice, showSharedInterests,
} from './view.js';
import { outbox, stopTyping } from './composer.js';
import { interests } from './interests.js';
import { isOnline, request } from './connection.js';
import { dateTime, stringList } from './util.js';
import { noteMatched } from './attention.js';

/** Moves the chat by `event` and shows the new state; returns the change, or null when the
 * machine ignores the event. */
function go(event, info) {
  const change = chat.fire(event, info);
  if (!change) return null;
  if (change.to !== CHATTING || change.newRoom) flags.partnerAway = false;
  renderPhase();
  return change;
}

/** A new chat or a new search starts on an empty log (pending messages go with it). */
export function clearChat() {
  clearLog();
  outbox.clear();
}

export function enterWaiting(event, info) {
  if (!chat.next(event, info)) return;
  clearChat();
  go(event, info);
  addNotice(chat.privateKey ? 'notice_waiting_friend' : 'notice_waiting');
  ensureFocus(chat.privateKey ? ui.privateCopyBtn : ui.log);
}

export function enterChat(event, room, interestList, pairedAt, kind) {
  const info = { room, pairedAt, kind };
  if (!chat.next(event, info)) return;
  const list = stringList(interestList);
  if (chat.phase !== WAITING) clearChat();
  go(event, info);
  showSharedInterests(list);
  const notice = kind === 'private' ? 'notice_matched_private'
    : (list.length ? 'notice_matched_interests' : 'notice_matched');
  addNotice(notice, { interests: list }, 'good');
  // from the control that asked for a stranger, too: `matched` can come before the ack of
  // Next, while the Next button (still shown) holds the focus
  ensureFocus(ui.input, [ui.log, ui.startBtn, ui.cancelBtn, ui.nextBtn, ui.findNewBtn]);
  noteMatched();
}

/** A chatting snapshot for a room that is not on screen: that chat, with what it said. */
export function resumeChat(room, interestList, kind) {
  if (chat.phase === WAITING) {
    enterChat('resumed_chat', room, interestList, undefined, kind);  // matched while we were away
    return;
  }
  clearChat();
  go('resumed_chat', { room, kind });
  showSharedInterests(interestList);
  addNotice('notice_resumed', null, 'good');
}

/** The same chat again (a snapshot that only fills in what is missing). */
export function refreshChat(room) {
  go('resumed_chat', { room });
}

/** Ends the chat on screen; returns whether it did (false: the event was not about it). */
export function endChat(event, info, key, kind) {
  if (!chat.next(event, info)) return false;
  stopTyping();
  go(event, info);
  addNotice(key, null, kind);
  ensureFocus(ui.findNewBtn);
  return true;
}

function goIdle(event, info) {
  if (!go(event, info)) return;
  ensureFocus(ui.startBtn);
}

/** A snapshot with no chat and no search: the chat on screen, or the search, is over. */
export function resumeIdle(at) {
  if (chat.phase === CHATTING) endChat('resumed_idle', { at }, 'notice_chat_gone', 'warn');
  else goIdle('resumed_idle', { at });
}

/** The server knows us as a new user: whatever we showed is over. */
export function sessionLost() {
  if (chat.phase === CHATTING) endChat('session_lost', {}, 'notice_chat_gone', 'warn');
  else if (go('session_lost')) startSearch();  // we were looking for someone: keep looking
}

/** Whether a button action may run now; tells the user when the socket is away. */
function canAct() {
  if (flags.busy) return false;
  if (!isOnline()) {
    notifyError(flags.replaced ? 'replaced' : 'offline');
    return false;
  }
  return true;
}

/** join (Start, Find a new stranger) or next: the ack starts the search, unless a chat that
 * began since (its `matched` overtook the ack) is on screen. */
function search(event, payload) {
  const about = chat.room;
  setBusy(true);
  request(event, payload, (res) => {
    setBusy(false);
    if (!res.ok) notifyError(res.code);
    else enterWaiting('search', { about });
  });
}

export function startSearch() {
  if (!canAct()) return;
  hideStartError();
  search('join', { interests: interests.slice() });
}

function onNext() {
  if (!canAct()) return;
  stopTyping();
  search('next', {});
}

function onLeave() {
  if (!canAct()) return;
  stopTyping();
  setBusy(true);
  request('leave', {}, (res) => {
    setBusy(false);
    if (!res.ok) notifyError(res.code);
    else if (chat.phase === WAITING) goIdle('leave');
    else endChat('leave', {}, 'notice_you_left', 'info');
  });
}

function onChangeInterests() {
  goIdle('change_interests');
  ui.interestsInput.focus();
}

function openReport() {
  if (!canAct() || chat.lastRoom === null) return;
  if (typeof ui.reportDialog.showModal === 'function') ui.reportDialog.showModal();
  else sendReport('other');
}

function sendReport(reason) {
  const room = chat.lastRoom;
  setBusy(true);
  request('report', { reason }, (res) => {
    setBusy(false);
    if (!res.ok) {
      notifyError(res.code);
      return;
    }
    flags.reportedRoom = room;
    // the report also keeps the two apart (a block) until `blocked_until`
    const until = dateTime(res.blocked_until);
    addNotice(until ? 'notice_reported_blocked' : 'notice_reported', { time: until }, 'good');
    renderControls();
    ensureFocus(chat.phase === CHATTING ? ui.input : ui.findNewBtn);
  });
}

const ESC_TWICE_MS = 1000;  // Esc twice within this long is Next (as Omegle had it)
let lastEsc = 0;

/** Esc, then Esc again (no other key between) within a second, while chatting: Next. One Esc
 * only says so. */
function onKeydown(event) {
  if (event.key !== 'Escape') {
    lastEsc = 0;  // twice means twice in a row
    return;
  }
  if (event.repeat || event.isComposing || event.defaultPrevented) return;
  if (chat.phase !== CHATTING || ui.reportDialog.open) {
    lastEsc = 0;
    return;
  }
  const now = Date.now();
  if (lastEsc && now - lastEsc <= ESC_TWICE_MS) {
    lastEsc = 0;
    hideComposerNotice();
    onNext();
    return;
  }
  lastEsc = now;
  showComposerNotice('esc_again');
}

export function bindFlow() {
  document.addEventListener('keydown', onKeydown);
  ui.cancelBtn.addEventListener('click', onLeave);
  ui.nextBtn.addEventListener('click', onNext);
  ui.leaveBtn.addEventListener('click', onLeave);
  ui.findNewBtn.addEventListener('click', startSearch);
  ui.changeInterestsBtn.addEventListener('click', onChangeInterests);
  ui.reportBtn.addEventListener('click', openReport);
  ui.reportForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const reason = new FormData(ui.reportForm).get('reason') || 'other';
    ui.reportDialog.close();
    sendReport(String(reason));
  });
  ui.reportCancel.addEventListener('click', () => ui.reportDialog.close());
}
