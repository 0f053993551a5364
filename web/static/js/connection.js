/* connection.js — the Socket.IO link (the global `io` of the vendored client, a classic
 * script loaded first): connecting with the token kept in sessionStorage and `since` (the
 * chat's last seq), requests with acks, reconnecting (refusals, rate limits, a worker's drain,
 * the browser's offline/online), another tab taking the chat over ("Use here"), and `hello`. */
import { chat, IDLE, WAITING, CHATTING, ENDED } from './state.js';
import { flags } from './flags.js';
import { ui } from './ui.js';
import { addNotice, hidePartnerTyping } from './log.js';
import { setText } from './i18n.js';
import {
  ensureFocus, finishBoot, finishBootIn, hideBanner, notifyError, renderControls, setOnline,
  setStats, showBanned, showBanner, showConnectionBanner,
} from './view.js';
import { forgetTyping, resendOutbox } from './composer.js';
import { sessionLost } from './flow.js';
import {
  onMatched, onMessage, onPartnerAway, onPartnerBack, onPartnerLeft, onResumed, onTyping, onWaiting,
} from './events.js';
import { storageGet, storageSet } from './util.js';
import { joinPendingRoom } from './private.js';

const TOKEN_KEY = 'chat.token';      // sessionStorage: a reload is the same user, a new tab is not
const ACK_TIMEOUT_MS = 10000;
const RATE_LIMITED_RETRY_MS = 3000;  // a reconnect refused as too frequent waits this long
const BOOT_WAIT_MS = 2500;           // after hello, how long a reload waits for `resumed`
const DRAIN_QUIET_MS = 5000;         // after `draining`, how long losing the link is part of the move
const DRAIN_RETRIES = 3;             // immediate retries while moving, before socket.io's back-off

/** A reload (a token in this tab) waits to learn whether it resumes a chat. */
export const hadTokenAtLoad = Boolean(storageGet(sessionStorage, TOKEN_KEY));
let socket = null;
let reconnectTimer = 0;

/** True while the socket is connected and the browser has a network. (socket.io delivers the
 * server's first events, such as `hello`, before its own `connect` event, so this asks the
 * socket rather than keeping a flag.) */
export function isOnline() {
  return Boolean(socket && socket.connected) && !flags.netOffline;
}

/** Emits `event` with an ack; `done` gets the ack, or {ok: false, code} (offline, timeout). */
export function request(event, payload, done) {
  if (!isOnline()) {
    done({ ok: false, code: 'offline' });
    return;
  }
  socket.timeout(ACK_TIMEOUT_MS).emit(event, payload, (err, res) => {
    if (err) {
      done({ ok: false, code: isOnline() ? 'timeout' : 'offline' });
    } else if (res && res.ok) {
      done(res);
    } else {
      const code = (res && res.error && res.error.code) || 'unknown';
      if (code === 'replaced') onReplaced();
      if (code === 'banned') onBanned(res.error.until);
      done({ ok: false, code });
    }
  });
}

// ---------------------------------------------------------------- server events of the link

function onHello(data) {
  if (!data || typeof data !== 'object') return;
  if (typeof data.token === 'string' && data.token) storageSet(sessionStorage, TOKEN_KEY, data.token);
  const otherUser = flags.user !== null && data.user !== flags.user;
  flags.user = data.user;
  flags.replaced = false;
  setOnline(data.online);
  hideBanner();
  renderControls();
  if (flags.offlineNoticed) {
    flags.offlineNoticed = false;
    if (chat.phase !== IDLE) addNotice('notice_reconnected', null, 'good');
  }
  if (otherUser) sessionLost();
  resendOutbox();
  if (!flags.booted) {
    if (hadTokenAtLoad) finishBootIn(BOOT_WAIT_MS);
    else finishBoot();
  }
  joinPendingRoom();
}

function onServerError(data) {
  if (data && data.code === 'replaced') onReplaced();
  else if (data && data.code === 'banned') onBanned(data.until);
  else notifyError(data && data.code);
}

/** Banned (at connect, at join, or while waiting or chatting): the banned view, and the link
 * stays down; a reload after the ban's end comes back. */
function onBanned(until) {
  flags.bannedUntil = Number(until) || Date.now();
  flags.drainUntil = 0;
  clearTimeout(reconnectTimer);
  if (socket && (socket.connected || socket.active)) socket.disconnect();
  showBanned(flags.bannedUntil);
}

/** Our token was opened in another tab, which now has the chat. Reconnecting by ourselves
 * would take it back, and that tab would take it back again: wait for "Use here". */
function onReplaced() {
  if (flags.replaced) return;
  flags.replaced = true;
  flags.drainUntil = 0;
  clearTimeout(reconnectTimer);
  if (socket && (socket.connected || socket.active)) socket.disconnect();
  showConnectionBanner();
  renderControls();
}

function onUseHere() {
  flags.replaced = false;
  showConnectionBanner();
  reconnectNow();
  const home = { [CHATTING]: ui.input, [ENDED]: ui.findNewBtn, [WAITING]: ui.log }[chat.phase] || ui.startBtn;
  ensureFocus(home, [ui.bannerAction]);
}

/** The worker is about to restart: move now rather than wait for it to close on us. */
function onDraining() {
  if (flags.replaced || !isOnline()) return;
  flags.drainUntil = Date.now() + DRAIN_QUIET_MS;
  flags.drainTries = 0;
  reconnectNow();
}

/** While moving, a failed or closed connection (it may have reached the stopping worker
 * again) is tried again at once, a few times; false when the move is over or given up. */
function drainRetry() {
  if (Date.now() >= flags.drainUntil || flags.drainTries >= DRAIN_RETRIES) {
    flags.drainUntil = 0;
    return false;
  }
  flags.drainTries += 1;
  clearTimeout(reconnectTimer);
  reconnectTimer = setTimeout(reconnectNow, 0);  // not from inside socket.io's own handler
  return true;
}

// ---------------------------------------------------------------- socket.io's own events

function onConnect() {
  flags.everConnected = true;
  flags.refusals = 0;
  clearTimeout(reconnectTimer);
  hideBanner();
  renderControls();
}

function onDisconnect(reason) {
  if (flags.bannedUntil) return;  // we closed it: nothing to reconnect
  forgetTyping();
  hidePartnerTyping();
  ui.online.classList.remove('is-live');
  showConnectionBanner();
  // a drain is a planned move: the short banner is all there is to see of it
  let moving = false;
  if (flags.drainUntil && !flags.replaced && !flags.netOffline) {
    moving = reason === 'io client disconnect' ? Date.now() < flags.drainUntil : drainRetry();
  }
  if (!flags.replaced && !moving) noteConnectionLost();
  // socket.io won't retry this one; nor must we when another tab took the chat over
  if (reason === 'io server disconnect' && !flags.replaced && !flags.netOffline && !moving) {
    scheduleReconnect();
  }
  renderControls();
}

/** Says once in the log that the link is gone; "reconnected" follows after the next hello. */
function noteConnectionLost() {
  if (chat.phase === IDLE || flags.offlineNoticed) return;
  flags.offlineNoticed = true;
  flags.lostNotice = addNotice(flags.netOffline ? 'notice_offline' : 'notice_reconnecting', null, 'warn');
}

function onConnectError(err) {
  if (err && err.data && err.data.code === 'banned') {
    onBanned(err.data.until);
    return;
  }
  // 503 to the handshake: every server is full (or restarting); Socket.IO retries by itself.
  showConnectionBanner(Boolean(err && err.description === 503));
  if (flags.drainUntil) {
    if (drainRetry()) return;
    noteConnectionLost();  // the quiet move did not work out: say so as for any lost link
  }
  if (socket.active || flags.replaced || flags.netOffline) return;  // socket.io retries by itself
  if (err && err.data && err.data.code === 'rate_limited') {
    // Reconnecting too often (the server limits reconnects per user): the token is fine,
    // come back a little later as the same user.
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(() => { if (!socket.connected) socket.connect(); },
                                RATE_LIMITED_RETRY_MS);
    return;
  }
  // Refused by the server: retry with a backoff; after a few refusals drop the token,
  // which may be what is refused, and come back as a new user.
  flags.refusals += 1;
  if (flags.refusals >= 3) storageSet(sessionStorage, TOKEN_KEY, null);
  scheduleReconnect();
}

function scheduleReconnect() {
  clearTimeout(reconnectTimer);
  const delay = Math.min(30000, 1000 * 2 ** Math.min(flags.refusals, 5));
  reconnectTimer = setTimeout(() => {
    if (!socket.connected && !flags.replaced && !flags.netOffline && !flags.bannedUntil) {
      socket.connect();
    }
  }, delay);
}

/** A new connection at once, with the same token and `since` (authPayload): cuts short
 * socket.io's back-off, or moves a live connection off a worker that is draining. */
function reconnectNow() {
  if (!socket || flags.replaced || flags.netOffline || flags.bannedUntil) return;
  clearTimeout(reconnectTimer);
  if (socket.connected || socket.active) socket.disconnect();
  socket.connect();
}

// ---------------------------------------------------------------- the browser's network

/** The browser lost its network: hold sends rather than write into a dead socket, and stop
 * socket.io's retries, which cannot succeed before `online`. */
function onNetOffline() {
  flags.netOffline = true;
  flags.drainUntil = 0;
  clearTimeout(reconnectTimer);
  if (socket && (socket.connected || socket.active)) socket.disconnect();
  // the socket may have noticed first: its "reconnecting" line now says why
  if (flags.offlineNoticed && flags.lostNotice && flags.lostNotice.isConnected) {
    setText(flags.lostNotice, 'notice_offline');
  }
  showConnectionBanner();
  renderControls();
}

/** The network is back: connect now (socket.io's back-off may be many seconds away); what was
 * held goes out after the hello (resendOutbox). */
function onNetOnline() {
  flags.netOffline = false;
  if (!isOnline()) {
    showConnectionBanner();
    reconnectNow();
  }
  renderControls();
}

/** Sent on every (re)connection, so each one carries the current token and seq. */
function authPayload() {
  const auth = { since: chat.lastSeq };
  const token = storageGet(sessionStorage, TOKEN_KEY);
  if (token) auth.token = token;
  return auth;
}

export function connect() {
  ui.bannerAction.addEventListener('click', onUseHere);
  window.addEventListener('offline', onNetOffline);
  window.addEventListener('online', onNetOnline);
  if (typeof window.io !== 'function') {
    showBanner('banner_connecting');
    finishBoot();
    return;
  }
  // offline at load: the socket is made but waits for `online` (onNetOnline connects it)
  socket = window.io({ auth: (cb) => cb(authPayload()), autoConnect: !flags.netOffline });
  if (flags.netOffline) showConnectionBanner();
  socket.on('connect', onConnect);
  socket.on('disconnect', onDisconnect);
  socket.on('connect_error', onConnectError);
  socket.on('hello', onHello);
  socket.on('resumed', onResumed);
  socket.on('waiting', onWaiting);
  socket.on('matched', onMatched);
  socket.on('message', onMessage);
  socket.on('typing', onTyping);
  socket.on('partner_left', onPartnerLeft);
  socket.on('partner_away', onPartnerAway);
  socket.on('partner_back', onPartnerBack);
  socket.on('draining', onDraining);
  socket.on('stats', (data) => data && setStats(data));
  socket.on('error', onServerError);
}
