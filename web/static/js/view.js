/* view.js — what the page shows around the log: which view (loading, start, chat), the chat's
 * status line and controls, the header's online count, the connection banner and the
 * notices/errors. It only shows state (state.js, flags.js); it never changes it. */
import { chat, IDLE, WAITING, CHATTING, ENDED } from './state.js';
import { flags } from './flags.js';
import { ui } from './ui.js';
import { setText, setAttrText, errorKey } from './i18n.js';
import { addNotice, hidePartnerTyping } from './log.js';
import { isOnline } from './connection.js';
import { dateTime, stringList } from './util.js';

const NOTICE_HIDE_MS = 6000;
let composerNoticeTimer = 0;
let bootTimer = 0;
const wait = { since: 0, timer: 0, count: null };  // the search on screen: since when, how many wait

// ---------------------------------------------------------------- views and controls

function renderView() {
  const banned = Boolean(flags.bannedUntil);
  const loading = !flags.booted && !banned;
  ui.bannedView.hidden = !banned;
  ui.loadingView.hidden = !loading;
  ui.startView.hidden = banned || loading || chat.phase !== IDLE;
  ui.chatView.hidden = banned || loading || chat.phase === IDLE;
}

/** Banned until `until` (ms): the banned view instead of every other, with the end of the ban
 * in the viewer's own time zone and language. */
export function showBanned(until) {
  setText(ui.bannedText, 'banned_text', { time: dateTime(until) });
  ui.online.hidden = true;  // not "connecting": the link stays down
  hideBanner();
  renderView();
}

/** Shows the chat's state: after every transition (and once at start). */
export function renderPhase() {
  if (chat.phase !== CHATTING) {
    hidePartnerTyping();
    ui.sharedInterests.hidden = true;
  }
  renderStatus();
  renderView();
  renderControls();
  renderWait();
  renderPrivate();
}

/** While waiting for a friend: the private room's key and its link, to share. */
function renderPrivate() {
  const key = chat.phase === WAITING ? chat.privateKey : null;
  ui.privateShare.hidden = key === null;
  if (key === null) return;
  ui.privateKey.textContent = key;
  // the link's form people expect (/?room=KEY); nginx logs no query string, and the page
  // takes the key out of its address bar at once. /#room=KEY (a fragment, never sent to a
  // server) joins as well, for whoever prefers to share it so.
  ui.privateLink.value = `${window.location.origin}/?room=${encodeURIComponent(key)}`;
}

// ---------------------------------------------------------------- the waiting line

/** While waiting: how long (m:ss, each second) and how many wait (from `stats`, when told). */
function renderWait() {
  const waiting = chat.phase === WAITING;
  if (!waiting) {
    clearTimeout(wait.timer);
    wait.timer = 0;
    wait.since = 0;
    ui.waitInfo.hidden = true;
    return;
  }
  if (!wait.since) {
    wait.since = Date.now();
    tickWait();
  }
  renderWaitCount();
  ui.waitInfo.hidden = false;
}

function tickWait() {
  clearTimeout(wait.timer);
  const elapsed = Math.max(0, Date.now() - wait.since);
  const seconds = Math.floor(elapsed / 1000);
  const time = `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, '0')}`;
  setText(ui.waitTime, 'wait_time', { time });
  wait.timer = setTimeout(tickWait, 1000 - (elapsed % 1000) + 10);  // on the next whole second
}

function renderWaitCount() {
  const known = wait.count !== null;
  if (known) setText(ui.waitCount, 'wait_count', { n: wait.count });
  ui.waitCount.hidden = !known || chat.privateKey !== null;  // a friend is not in the queue
}

export function renderStatus() {
  const away = chat.phase === CHATTING && flags.partnerAway;
  const friend = chat.phase === WAITING && chat.privateKey !== null;
  const statusKey = away ? 'chat_status_partner_away' : {
    [WAITING]: friend ? 'chat_status_waiting_friend' : 'chat_status_waiting', [CHATTING]: 'chat_status_chatting', [ENDED]: 'chat_status_ended',
  }[chat.phase];
  if (statusKey) setText(ui.chatStatus, statusKey);
  ui.chatStatus.classList.toggle('is-warn', away);
}

export function renderControls() {
  const phase = chat.phase;
  const canReport = (phase === CHATTING || phase === ENDED)
    && chat.lastRoom !== null && flags.reportedRoom !== chat.lastRoom;
  ui.cancelBtn.hidden = phase !== WAITING;
  ui.nextBtn.hidden = phase !== CHATTING;
  ui.leaveBtn.hidden = phase !== CHATTING;
  ui.findNewBtn.hidden = phase !== ENDED;
  ui.changeInterestsBtn.hidden = phase !== ENDED;
  ui.reportBtn.hidden = !canReport;

  // aria-disabled (not disabled) keeps focus on the button while the socket is away.
  const blocked = !isOnline() || flags.busy;
  for (const btn of [ui.startBtn, ui.cancelBtn, ui.nextBtn, ui.leaveBtn, ui.findNewBtn, ui.reportBtn,
    ui.privateCreateBtn, ui.privateJoinBtn]) {
    btn.setAttribute('aria-disabled', String(blocked));
  }
  ui.input.disabled = phase !== CHATTING;
  ui.sendBtn.disabled = phase !== CHATTING;
}

export function showSharedInterests(interests) {
  const list = stringList(interests);
  if (list.length) setText(ui.sharedInterests, 'shared_interests', { interests: list });
  ui.sharedInterests.hidden = list.length === 0;
}

/** Moves focus to `target` when focus was lost (hidden or disabled element) or sits on `from`. */
export function ensureFocus(target, from = []) {
  const active = document.activeElement;
  const lost = !active || active === document.body || active.disabled || active.closest('[hidden]');
  if ((lost || from.includes(active)) && !target.hidden && !target.disabled) {
    target.focus({ preventScroll: true });
  }
}

export function setBusy(busy) {
  flags.busy = busy;
  renderControls();
}

/** A reload shows the loading view until it knows whether it resumes a chat: at most `ms`. */
export function finishBootIn(ms) {
  clearTimeout(bootTimer);
  bootTimer = setTimeout(finishBoot, ms);
}

export function finishBoot() {
  clearTimeout(bootTimer);
  if (flags.booted) return;
  flags.booted = true;
  renderView();
}

// ---------------------------------------------------------------- header, banner, notices

export function setOnline(count) {
  const n = Number(count);
  if (!Number.isFinite(n) || n < 0) return;
  setText(ui.onlineText, 'online_count', { n });
  setAttrText(ui.online, 'title', 'online_count', { n });
  ui.online.classList.add('is-live');
}

export function setStats(stats) {
  setOnline(stats.online);
  const nums = ['online', 'chatting', 'waiting'].map((k) => Number(stats[k]));
  if (nums.every(Number.isFinite)) {
    setAttrText(ui.online, 'title', 'stats_title', { online: nums[0], chatting: nums[1], waiting: nums[2] });
  }
  if (Number.isFinite(nums[2]) && nums[2] >= 0) {
    wait.count = nums[2];
    if (chat.phase === WAITING) renderWaitCount();
  }
}

/** mode: 'busy' (a spinner: something is under way), 'still' (we wait for the user's
 * network) or 'replaced' (with the "Use here" button). */
export function showBanner(key, mode = 'busy') {
  setText(ui.bannerText, key);
  ui.banner.classList.toggle('is-still', mode !== 'busy');
  ui.bannerAction.hidden = mode !== 'replaced';
  ui.banner.hidden = false;
}

export function hideBanner() {
  ui.banner.hidden = true;
  ui.bannerAction.hidden = true;
}

/** The banner that says why the socket is away. */
export function showConnectionBanner(full) {
  if (flags.replaced) showBanner('banner_replaced', 'replaced');
  else if (flags.netOffline) showBanner('banner_offline', 'still');
  else if (full) showBanner('banner_full');
  else showBanner(flags.everConnected ? 'banner_reconnecting' : 'banner_connecting');
}

function showStartError(key) {
  setText(ui.startError, key);
  ui.startError.hidden = false;
}

export function hideStartError() {
  ui.startError.hidden = true;
}

/** An error of the private room controls (an i18n key), under the key field. */
export function showPrivateError(key) {
  setText(ui.privateError, key.startsWith('error_') ? errorKey(key.slice(6)) : key);
  ui.privateError.hidden = false;
}

export function hidePrivateError() {
  ui.privateError.hidden = true;
}

export function showComposerNotice(key, vars, warn) {
  setText(ui.composerNotice, key, vars);
  ui.composerNotice.classList.toggle('is-warn', Boolean(warn));
  ui.composerNotice.hidden = false;
  clearTimeout(composerNoticeTimer);
  composerNoticeTimer = setTimeout(hideComposerNotice, NOTICE_HIDE_MS);
}

export function hideComposerNotice() {
  clearTimeout(composerNoticeTimer);
  ui.composerNotice.hidden = true;
}

/** Shows a translated error for a protocol error code where the user is looking. */
export function notifyError(code) {
  const key = errorKey(code);
  const slowDown = code === 'rate_limited';
  if (!flags.booted || chat.phase === IDLE) {
    showStartError(key);
    return;
  }
  addNotice(key, null, slowDown ? 'warn' : 'error');
  if (slowDown && chat.phase === CHATTING) showComposerNotice(key, null, true);
}
