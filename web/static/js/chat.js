/* chat.js — the browser side of the anonymous one-to-one chat (web/templates/index.html).
 * It speaks the Socket.IO contract in docs/protocol.md, keeps the session token in
 * sessionStorage so that a reload resumes the chat, and takes every visible string from the
 * i18n table embedded in the page (#i18n-data, from web/i18n.json).
 * Text that comes from the network only ever reaches the page through textContent.
 * Plain browser JavaScript: no build step, no framework; needs the vendored socket.io client. */
(() => {
  'use strict';

  // ---------------------------------------------------------------- constants

  const TOKEN_KEY = 'chat.token';          // sessionStorage: a reload is the same user, a new tab is not
  const LANG_KEY = 'chat.lang';            // localStorage: the language picked in the switcher
  const INTERESTS_KEY = 'chat.interests';  // localStorage: the last interests, as a convenience
  const LANGS = ['en', 'zh-TW', 'zh-CN'];

  const ACK_TIMEOUT_MS = 10000;
  const TYPING_REPEAT_MS = 2000;       // send typing:true at most this often
  const TYPING_IDLE_MS = 3000;         // send typing:false after this long without a keystroke
  const PARTNER_TYPING_TTL_MS = 6000;  // hide the partner's indicator after this long without news
  const RATE_LIMITED_RETRY_MS = 3000;  // a reconnect refused as too frequent waits this long
  const BOOT_WAIT_MS = 2500;           // after hello, how long a reload waits for `resumed`
  const BOOT_GIVE_UP_MS = 6000;        // show the page anyway when the server can't be reached
  const NOTICE_HIDE_MS = 6000;
  const DRAIN_QUIET_MS = 5000;         // after `draining`, how long losing the link is part of the move
  const DRAIN_RETRIES = 3;             // immediate retries while moving, before socket.io's back-off
  const NEAR_BOTTOM_PX = 80;

  const SEPARATORS = /[,，、;；\n]/;
  const RETRYABLE = new Set(['timeout', 'offline', 'rate_limited', 'unavailable', 'internal']);
  const LEAVE_REASONS = new Set(['next', 'left', 'disconnected']);
  const I18N_ATTRS = { placeholder: 'i18nPlaceholder', 'aria-label': 'i18nAriaLabel', title: 'i18nTitle' };

  const I18N = JSON.parse(document.getElementById('i18n-data').textContent);
  const MAX_LEN = intFrom(document.body.dataset.maxLen, 500);
  const MAX_INTERESTS = intFrom(document.body.dataset.maxInterests, 5);
  const MAX_INTEREST_LEN = intFrom(document.body.dataset.maxInterestLen, 24);

  const $ = (id) => document.getElementById(id);
  const ui = {
    online: $('online'),
    onlineText: $('online-text'),
    langSelect: $('lang-select'),
    banner: $('banner'),
    bannerText: $('banner-text'),
    bannerAction: $('banner-action'),
    loadingView: $('loading-view'),
    startView: $('start-view'),
    chatView: $('chat-view'),
    startForm: $('start-form'),
    interestsBox: $('interests-box'),
    interestChips: $('interest-chips'),
    interestsInput: $('interests-input'),
    interestsError: $('interests-error'),
    startError: $('start-error'),
    startBtn: $('start-btn'),
    chatStatus: $('chat-status'),
    sharedInterests: $('shared-interests'),
    log: $('log'),
    typing: $('typing'),
    composer: $('composer'),
    input: $('message-input'),
    sendBtn: $('send-btn'),
    composerNotice: $('composer-notice'),
    charCount: $('char-count'),
    cancelBtn: $('cancel-btn'),
    nextBtn: $('next-btn'),
    leaveBtn: $('leave-btn'),
    findNewBtn: $('find-new-btn'),
    changeInterestsBtn: $('change-interests-btn'),
    reportBtn: $('report-btn'),
    reportDialog: $('report-dialog'),
    reportForm: $('report-form'),
    reportCancel: $('report-cancel'),
  };

  // ---------------------------------------------------------------- state

  const state = {
    lang: 'en',
    phase: 'idle',          // what the page shows: idle (start screen) | waiting | chatting | ended
    booted: false,          // false while a reload waits to learn whether it resumes a chat
    everConnected: false,
    offlineNoticed: false,  // a "reconnecting" notice is in the log, "reconnected" is owed
    lostNotice: null,       // that notice's node
    user: null,
    room: null,             // the room chatted in now
    roomAt: null,           // when it was paired (`matched.at`, the server's clock), if told
    lastRoom: null,         // the last room, so a report still works after the chat ended
    reportedRoom: null,
    seenSeqs: new Set(),    // seqs shown in this room
    lastSeq: 0,             // every seq up to this one is shown (sent as `since` on reconnect)
    outbox: new Map(),      // id -> {id, text, room, ts, status: 'pending'|'failed', attempts, node}
    interests: [],
    busy: false,            // a join/next/leave/report waits for its ack
    unread: 0,
    refusals: 0,            // connection attempts refused by the server in a row
    partnerAway: false,     // the stranger's connection dropped; they may still come back
    replaced: false,        // another tab took this chat over: stay off until "Use here"
    drainUntil: 0,          // the worker asked us to move: until then, a quiet reconnect is under way
    drainTries: 0,          // immediate retries spent on that move
    netOffline: navigator.onLine === false,  // the browser says there is no network
  };

  const timers = { typingIdle: 0, partnerTyping: 0, boot: 0, composerNotice: 0, reconnect: 0 };
  const typingOut = { on: false, sentAt: 0 };
  const hadTokenAtLoad = Boolean(storageGet(sessionStorage, TOKEN_KEY));
  let socket = null;

  // ---------------------------------------------------------------- small helpers

  function intFrom(value, fallback) {
    const n = parseInt(value, 10);
    return Number.isFinite(n) && n > 0 ? n : fallback;
  }

  function noop() {}

  /** True while the socket is connected and the browser has a network. (socket.io delivers the
   * server's first events, such as `hello`, before its own `connect` event, so this asks the
   * socket rather than keeping a flag.) */
  function isOnline() {
    return Boolean(socket && socket.connected) && !state.netOffline;
  }

  function storageGet(store, key) {
    try { return store.getItem(key); } catch (e) { return null; }
  }

  function storageSet(store, key, value) {
    try {
      if (value === null) store.removeItem(key); else store.setItem(key, value);
    } catch (e) { /* private mode or full: the page still works, it just forgets */ }
  }

  /** Length in code points, the way the server (Python len) counts. */
  function codePoints(text) {
    return Array.from(text).length;
  }

  function newId() {
    if (window.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    if (window.crypto && crypto.getRandomValues) crypto.getRandomValues(bytes);
    else for (let i = 0; i < bytes.length; i += 1) bytes[i] = Math.floor(Math.random() * 256);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function toSeq(value) {
    const n = Number(value);
    return Number.isInteger(n) && n > 0 ? n : null;
  }

  function clockTime(ts) {
    const date = new Date(Number.isFinite(Number(ts)) ? Number(ts) : Date.now());
    const pad = (n) => String(n).padStart(2, '0');
    return { text: `${pad(date.getHours())}:${pad(date.getMinutes())}`, iso: date.toISOString() };
  }

  function stringList(value) {
    return Array.isArray(value) ? value.filter((v) => typeof v === 'string' && v.trim()) : [];
  }

  // ---------------------------------------------------------------- i18n

  function t(key, vars) {
    const table = I18N[state.lang] || I18N.en || {};
    let text = key in table ? table[key] : (I18N.en && I18N.en[key]) || key;
    if (vars) {
      text = text.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? formatVar(vars[name]) : whole));
    }
    return text;
  }

  function formatVar(value) {
    if (Array.isArray(value)) return value.join(t('list_separator'));
    if (typeof value === 'number') return value.toLocaleString(state.lang);
    return String(value);
  }

  /** Fills one element's text and attributes from its data-i18n* keys. */
  function translateNode(node) {
    const vars = node.dataset.i18nVars ? JSON.parse(node.dataset.i18nVars) : null;
    if (node.dataset.i18n) node.textContent = t(node.dataset.i18n, vars);
    for (const [attr, prop] of Object.entries(I18N_ATTRS)) {
      if (node.dataset[prop]) node.setAttribute(attr, t(node.dataset[prop], vars));
    }
  }

  function setVars(node, vars) {
    if (vars) node.dataset.i18nVars = JSON.stringify(vars);
    else delete node.dataset.i18nVars;
  }

  /** Gives a node a translated text (kept in the current language on every switch). */
  function setText(node, key, vars) {
    node.dataset.i18n = key;
    setVars(node, vars);
    translateNode(node);
  }

  /** Gives a node a translated attribute (title, aria-label, placeholder). */
  function setAttrText(node, attr, key, vars) {
    node.dataset[I18N_ATTRS[attr]] = key;
    if (vars) setVars(node, vars);
    translateNode(node);
  }

  function applyI18n() {
    const selector = '[data-i18n], [data-i18n-placeholder], [data-i18n-aria-label], [data-i18n-title]';
    document.querySelectorAll(selector).forEach(translateNode);
    updateTitle();
  }

  function errorKey(code) {
    const key = `error_${code}`;
    return I18N.en && key in I18N.en ? key : 'error_unknown';
  }

  function languageFromTag(tag) {
    const lower = String(tag || '').toLowerCase();
    if (lower === 'en' || lower.startsWith('en-')) return 'en';
    if (lower !== 'zh' && !lower.startsWith('zh-')) return null;
    if (/^zh-(hant|tw|hk|mo)(-|$)/.test(lower)) return 'zh-TW';
    return 'zh-CN';
  }

  function detectLanguage() {
    const saved = storageGet(localStorage, LANG_KEY);
    if (LANGS.includes(saved)) return saved;
    const prefs = navigator.languages && navigator.languages.length
      ? navigator.languages : [navigator.language];
    for (const tag of prefs) {
      const lang = languageFromTag(tag);
      if (lang) return lang;
    }
    return 'en';
  }

  function setLanguage(lang, remember) {
    state.lang = LANGS.includes(lang) ? lang : 'en';
    document.documentElement.lang = state.lang;
    ui.langSelect.value = state.lang;
    if (remember) storageSet(localStorage, LANG_KEY, state.lang);
    applyI18n();
  }

  function updateTitle() {
    const title = t('page_title');
    document.title = state.unread ? t('title_unread', { n: state.unread, title }) : title;
  }

  // ---------------------------------------------------------------- views and controls

  function renderView() {
    const loading = !state.booted;
    ui.loadingView.hidden = !loading;
    ui.startView.hidden = loading || state.phase !== 'idle';
    ui.chatView.hidden = loading || state.phase === 'idle';
  }

  function setPhase(phase) {
    state.phase = phase;
    if (phase !== 'chatting') {
      hidePartnerTyping();
      ui.sharedInterests.hidden = true;
    }
    if (phase !== 'chatting') state.partnerAway = false;
    renderStatus();
    renderView();
    renderControls();
  }

  function renderStatus() {
    const away = state.phase === 'chatting' && state.partnerAway;
    const statusKey = away ? 'chat_status_partner_away' : {
      waiting: 'chat_status_waiting', chatting: 'chat_status_chatting', ended: 'chat_status_ended',
    }[state.phase];
    if (statusKey) setText(ui.chatStatus, statusKey);
    ui.chatStatus.classList.toggle('is-warn', away);
  }

  function renderControls() {
    const phase = state.phase;
    const canReport = (phase === 'chatting' || phase === 'ended')
      && state.lastRoom !== null && state.reportedRoom !== state.lastRoom;
    ui.cancelBtn.hidden = phase !== 'waiting';
    ui.nextBtn.hidden = phase !== 'chatting';
    ui.leaveBtn.hidden = phase !== 'chatting';
    ui.findNewBtn.hidden = phase !== 'ended';
    ui.changeInterestsBtn.hidden = phase !== 'ended';
    ui.reportBtn.hidden = !canReport;

    // aria-disabled (not disabled) keeps focus on the button while the socket is away.
    const blocked = !isOnline() || state.busy;
    for (const btn of [ui.startBtn, ui.cancelBtn, ui.nextBtn, ui.leaveBtn, ui.findNewBtn, ui.reportBtn]) {
      btn.setAttribute('aria-disabled', String(blocked));
    }
    ui.input.disabled = phase !== 'chatting';
    ui.sendBtn.disabled = phase !== 'chatting';
  }

  /** Moves focus to `target` when focus was lost (hidden or disabled element) or sits on `from`. */
  function ensureFocus(target, from = []) {
    const active = document.activeElement;
    const lost = !active || active === document.body || active.disabled || active.closest('[hidden]');
    if ((lost || from.includes(active)) && !target.hidden && !target.disabled) {
      target.focus({ preventScroll: true });
    }
  }

  function setBusy(busy) {
    state.busy = busy;
    renderControls();
  }

  /** Whether a button action may run now; tells the user when the socket is away. */
  function canAct() {
    if (state.busy) return false;
    if (!isOnline()) {
      notifyError(state.replaced ? 'replaced' : 'offline');
      return false;
    }
    return true;
  }

  function finishBoot() {
    clearTimeout(timers.boot);
    if (state.booted) return;
    state.booted = true;
    renderView();
  }

  // ---------------------------------------------------------------- header, banner, notices

  function setOnline(count) {
    const n = Number(count);
    if (!Number.isFinite(n) || n < 0) return;
    setText(ui.onlineText, 'online_count', { n });
    setAttrText(ui.online, 'title', 'online_count', { n });
    ui.online.classList.add('is-live');
  }

  function setStats(stats) {
    setOnline(stats.online);
    const nums = ['online', 'chatting', 'waiting'].map((k) => Number(stats[k]));
    if (nums.every(Number.isFinite)) {
      setAttrText(ui.online, 'title', 'stats_title', { online: nums[0], chatting: nums[1], waiting: nums[2] });
    }
  }

  /** mode: 'busy' (a spinner: something is under way), 'still' (we wait for the user's
   * network) or 'replaced' (with the "Use here" button). */
  function showBanner(key, mode = 'busy') {
    setText(ui.bannerText, key);
    ui.banner.classList.toggle('is-still', mode !== 'busy');
    ui.bannerAction.hidden = mode !== 'replaced';
    ui.banner.hidden = false;
  }

  function hideBanner() {
    ui.banner.hidden = true;
    ui.bannerAction.hidden = true;
  }

  /** The banner that says why the socket is away. */
  function showConnectionBanner(full) {
    if (state.replaced) showBanner('banner_replaced', 'replaced');
    else if (state.netOffline) showBanner('banner_offline', 'still');
    else if (full) showBanner('banner_full');
    else showBanner(state.everConnected ? 'banner_reconnecting' : 'banner_connecting');
  }

  function showStartError(key) {
    setText(ui.startError, key);
    ui.startError.hidden = false;
  }

  function hideStartError() {
    ui.startError.hidden = true;
  }

  function showComposerNotice(key, vars, warn) {
    setText(ui.composerNotice, key, vars);
    ui.composerNotice.classList.toggle('is-warn', Boolean(warn));
    ui.composerNotice.hidden = false;
    clearTimeout(timers.composerNotice);
    timers.composerNotice = setTimeout(hideComposerNotice, NOTICE_HIDE_MS);
  }

  function hideComposerNotice() {
    clearTimeout(timers.composerNotice);
    ui.composerNotice.hidden = true;
  }

  /** Shows a translated error for a protocol error code where the user is looking. */
  function notifyError(code) {
    const key = errorKey(code);
    const slowDown = code === 'rate_limited';
    if (!state.booted || state.phase === 'idle') {
      showStartError(key);
      return;
    }
    addNotice(key, null, slowDown ? 'warn' : 'error');
    if (slowDown && state.phase === 'chatting') showComposerNotice(key, null, true);
  }

  // ---------------------------------------------------------------- the log

  function isNearBottom() {
    const log = ui.log;
    return log.scrollHeight - log.scrollTop - log.clientHeight < NEAR_BOTTOM_PX;
  }

  function scrollToBottom() {
    ui.log.scrollTop = ui.log.scrollHeight;
  }

  function clearLog() {
    ui.log.replaceChildren();
    state.outbox.clear();
    hidePartnerTyping();
  }

  /** A system line in the log; kind is info, good, warn or error. */
  function addNotice(key, vars, kind = 'info') {
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

  function setMessageTime(node, ts) {
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
  function placeBySeq(node, seq) {
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

  function rememberSeq(seq) {
    state.seenSeqs.add(seq);
    // `since` is the end of the unbroken run 1..n: a message still in flight when the link
    // drops (a gap) is then replayed on resume instead of skipped; repeats are dropped by seq.
    while (state.seenSeqs.has(state.lastSeq + 1)) state.lastSeq += 1;
  }

  /** Shows a message; returns its node. `seq` null means not yet acknowledged. */
  function showMessage({ mine, text, ts, seq }) {
    const stick = mine || isNearBottom();
    const node = buildMessage(mine, text, ts);
    if (seq !== null) {
      node.dataset.seq = String(seq);
      rememberSeq(seq);
    }
    insertBySeq(node, seq);
    if (stick) scrollToBottom();
    return node;
  }

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

  // ---------------------------------------------------------------- sending messages

  function request(event, payload, done) {
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
        done({ ok: false, code });
      }
    });
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
    if (state.phase !== 'chatting') {
      showComposerNotice('error_not_chatting');
      return;
    }
    const entry = {
      id: newId(), text: raw.trim(), room: state.room, ts: Date.now(), status: 'pending', attempts: 0, node: null,
    };
    entry.node = showMessage({ mine: true, text: entry.text, ts: entry.ts, seq: null });
    setMessageStatus(entry, 'pending');
    state.outbox.set(entry.id, entry);
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
      if (state.outbox.get(entry.id) !== entry) return;  // settled already
      if (res.ok) {
        markSent(entry, res);
      } else if (res.code === 'offline' || res.code === 'replaced' || attempt !== entry.attempts) {
        // the link dropped or went to another tab (it is resent with the same id after the
        // next hello) or a newer try is out
      } else {
        failMessage(entry, res.code);
      }
    });
  }

  function markSent(entry, ack) {
    const seq = toSeq(ack.seq);
    if (seq !== null && entry.room === state.room) {
      entry.node.dataset.seq = String(seq);
      rememberSeq(seq);
      if (entry.node.isConnected) placeBySeq(entry.node, seq);
    }
    if (ack.ts !== undefined) setMessageTime(entry.node, ack.ts);
    setMessageStatus(entry, 'sent');
    state.outbox.delete(entry.id);
  }

  function failMessage(entry, code) {
    setMessageStatus(entry, 'failed', code);
    const stale = code === 'not_chatting' && (state.phase !== 'chatting' || entry.room !== state.room);
    if (!stale) notifyError(code);
  }

  function retryMessage(entry) {
    if (state.phase !== 'chatting' || entry.room !== state.room) {
      notifyError('not_chatting');
      return;
    }
    setMessageStatus(entry, 'pending');
    ui.input.focus();
    transmit(entry);
  }

  /** After a reconnect: resend what is still pending in this chat, with the same ids. */
  function resendOutbox() {
    for (const entry of state.outbox.values()) {
      if (entry.status !== 'pending') continue;
      if (state.phase === 'chatting' && entry.room === state.room) transmit(entry);
      else failMessage(entry, 'not_chatting');
    }
  }

  // ---------------------------------------------------------------- typing

  function noteTyping() {
    if (state.phase !== 'chatting' || !isOnline()) return;
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
    clearTimeout(timers.typingIdle);
    timers.typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
  }

  /** quiet: the message being sent hides the partner's indicator by itself; say nothing. */
  function stopTyping(quiet = false) {
    clearTimeout(timers.typingIdle);
    if (!typingOut.on) return;
    typingOut.on = false;
    if (!quiet && state.phase === 'chatting' && isOnline()) request('typing', { typing: false }, noop);
  }

  function showPartnerTyping() {
    const stick = isNearBottom();
    ui.typing.hidden = false;  // the log gets shorter: keep its last message in sight
    if (stick) scrollToBottom();
    clearTimeout(timers.partnerTyping);
    timers.partnerTyping = setTimeout(hidePartnerTyping, PARTNER_TYPING_TTL_MS);
  }

  function hidePartnerTyping() {
    clearTimeout(timers.partnerTyping);
    ui.typing.hidden = true;
  }

  // ---------------------------------------------------------------- chat flow

  function showSharedInterests(interests) {
    const list = stringList(interests);
    if (list.length) setText(ui.sharedInterests, 'shared_interests', { interests: list });
    ui.sharedInterests.hidden = list.length === 0;
  }

  function beginRoom(room, interests, at) {
    state.partnerAway = false;
    state.room = room;
    state.roomAt = typeof at === 'number' ? at : null;
    state.lastRoom = room;
    state.seenSeqs = new Set();
    state.lastSeq = 0;
    setPhase('chatting');
    showSharedInterests(interests);
  }

  function enterWaiting() {
    if (state.phase === 'waiting') return;
    clearLog();
    state.room = null;
    state.lastSeq = 0;  // a resume must not apply the old room's position to a new room
    setPhase('waiting');
    addNotice('notice_waiting');
    ensureFocus(ui.log);
  }

  function enterChat(room, interests, at) {
    const list = stringList(interests);
    if (state.phase !== 'waiting') clearLog();
    beginRoom(room, list, at);
    addNotice(list.length ? 'notice_matched_interests' : 'notice_matched', { interests: list }, 'good');
    // from the control that asked for a stranger, too: `matched` can come before the ack of
    // Next, while the Next button (still shown) holds the focus
    ensureFocus(ui.input, [ui.log, ui.startBtn, ui.cancelBtn, ui.nextBtn, ui.findNewBtn]);
  }

  function endChat(key, kind) {
    stopTyping();
    state.room = null;
    state.lastSeq = 0;  // a resume must not apply the old room's position to a new room
    setPhase('ended');
    addNotice(key, null, kind);
    ensureFocus(ui.findNewBtn);
  }

  function goIdle() {
    state.room = null;
    state.lastSeq = 0;  // a resume must not apply the old room's position to a new room
    setPhase('idle');
    ensureFocus(ui.startBtn);
  }

  function startSearch() {
    if (!canAct()) return;
    hideStartError();
    setBusy(true);
    request('join', { interests: state.interests.slice() }, (res) => {
      setBusy(false);
      if (!res.ok) notifyError(res.code);
      else if (state.phase === 'idle' || state.phase === 'ended') enterWaiting();
    });
  }

  function onNext() {
    if (!canAct()) return;
    const roomBefore = state.room;
    stopTyping();
    setBusy(true);
    request('next', {}, (res) => {
      setBusy(false);
      if (!res.ok) notifyError(res.code);
      else if (!(state.phase === 'chatting' && state.room !== roomBefore)) enterWaiting();
    });
  }

  function onLeave() {
    if (!canAct()) return;
    stopTyping();
    setBusy(true);
    request('leave', {}, (res) => {
      setBusy(false);
      if (!res.ok) notifyError(res.code);
      else if (state.phase === 'waiting') goIdle();
      else if (state.phase === 'chatting') endChat('notice_you_left', 'info');
    });
  }

  function onChangeInterests() {
    goIdle();
    ui.interestsInput.focus();
  }

  function openReport() {
    if (!canAct() || state.lastRoom === null) return;
    if (typeof ui.reportDialog.showModal === 'function') ui.reportDialog.showModal();
    else sendReport('other');
  }

  function sendReport(reason) {
    const room = state.lastRoom;
    setBusy(true);
    request('report', { reason }, (res) => {
      setBusy(false);
      if (!res.ok) {
        notifyError(res.code);
        return;
      }
      state.reportedRoom = room;
      addNotice('notice_reported', null, 'good');
      renderControls();
      ensureFocus(state.phase === 'chatting' ? ui.input : ui.findNewBtn);
    });
  }

  // ---------------------------------------------------------------- server events

  function onHello(data) {
    if (!data || typeof data !== 'object') return;
    if (typeof data.token === 'string' && data.token) storageSet(sessionStorage, TOKEN_KEY, data.token);
    const otherUser = state.user !== null && data.user !== state.user;
    state.user = data.user;
    state.replaced = false;
    setOnline(data.online);
    hideBanner();
    renderControls();
    if (state.offlineNoticed) {
      state.offlineNoticed = false;
      if (state.phase !== 'idle') addNotice('notice_reconnected', null, 'good');
    }
    if (otherUser) sessionLost();
    resendOutbox();
    if (!state.booted) {
      if (hadTokenAtLoad) {
        clearTimeout(timers.boot);
        timers.boot = setTimeout(finishBoot, BOOT_WAIT_MS);
      } else {
        finishBoot();
      }
    }
  }

  /** The server knows us as a new user: whatever we showed is over. */
  function sessionLost() {
    if (state.phase === 'chatting') endChat('notice_chat_gone', 'warn');
    else if (state.phase === 'waiting') {
      setPhase('ended');
      startSearch();  // we were looking for someone: keep looking
    }
  }

  function onResumed(data) {
    if (!data || typeof data !== 'object') return;
    // On a Redis Cluster a `matched` may overtake a snapshot taken before it (they come from
    // two shards): a "waiting"/"idle" older than the chat on screen is not news.
    if (data.state !== 'chatting' && state.phase === 'chatting' && typeof data.at === 'number'
        && state.roomAt !== null && data.at < state.roomAt) return;
    if (data.state === 'chatting' && typeof data.room === 'string') resumeChat(data);
    else if (data.state === 'waiting') enterWaiting();
    else if (state.phase === 'chatting') endChat('notice_chat_gone', 'warn');
    else if (state.phase === 'waiting') goIdle();
    finishBoot();
  }

  function resumeChat(data) {
    if (data.room !== state.room) {
      if (state.phase === 'waiting') {
        enterChat(data.room, data.interests);   // matched while we were away
      } else {
        clearLog();
        beginRoom(data.room, data.interests);
        addNotice('notice_resumed', null, 'good');
      }
    } else {
      setPhase('chatting');  // the same chat: a snapshot that only fills in what is missing
    }
    if (typeof data.partner_away === 'boolean') {  // told by servers that know it
      state.partnerAway = data.partner_away;
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
    if (seq !== null && state.seenSeqs.has(seq)) return;
    const entry = item.mine ? state.outbox.get(item.id) : undefined;
    if (entry && entry.room === state.room) {
      markSent(entry, item);  // our pending message did arrive before the link dropped
      return;
    }
    showMessage({ mine: Boolean(item.mine), text: String(item.text ?? ''), ts: item.ts, seq });
  }

  function onWaiting(data) {
    if (data) setOnline(data.online);
    // `waiting` answers our own join/next, whose ack enters the waiting state as well. The
    // `matched` that follows comes from the matcher by another path and can overtake it: a
    // `waiting` that finds a chat on screen is stale and must not wipe that chat.
    if (state.phase !== 'chatting') enterWaiting();
  }

  function onMatched(data) {
    if (!data || typeof data.room !== 'string') return;
    if (data.room === state.room) return;  // the same match announced again
    enterChat(data.room, data.interests, data.at);
  }

  function onMessage(data) {
    if (!data || state.phase !== 'chatting') return;
    if (data.room !== undefined && data.room !== state.room) return;
    const seq = toSeq(data.seq);
    if (seq !== null && state.seenSeqs.has(seq)) return;
    hidePartnerTyping();
    partnerReturned();  // a message is proof enough, even if `partner_back` went astray
    showMessage({ mine: false, text: String(data.text ?? ''), ts: data.ts, seq });
    if (document.hidden) {
      state.unread += 1;
      updateTitle();
    }
  }

  function onTyping(data) {
    if (state.phase !== 'chatting') return;
    if (data && typeof data.room === 'string' && data.room !== state.room) return;  // a late one
    if (data && data.typing) {
      partnerReturned();
      showPartnerTyping();
    } else {
      hidePartnerTyping();
    }
  }

  /** Whether a presence event is about the chat on screen (late ones name an older room). */
  function aboutThisChat(data) {
    return state.phase === 'chatting' && Boolean(data) && typeof data.room === 'string'
      && data.room === state.room;
  }

  function onPartnerAway(data) {
    if (!aboutThisChat(data)) return;
    hidePartnerTyping();
    if (state.partnerAway) return;
    // the chat stays open and the composer usable: the server keeps messages for them
    state.partnerAway = true;
    renderStatus();
    addNotice('notice_partner_away', null, 'warn');
  }

  function onPartnerBack(data) {
    if (aboutThisChat(data)) partnerReturned();
  }

  function partnerReturned() {
    if (!state.partnerAway) return;
    state.partnerAway = false;
    renderStatus();
    addNotice('notice_partner_back', null, 'good');
  }

  function onPartnerLeft(data) {
    if (state.phase !== 'chatting') return;
    // a late notice about the previous chat must not end the one that has just begun
    if (data && typeof data.room === 'string' && data.room !== state.room) return;
    const reason = data && LEAVE_REASONS.has(data.reason) ? data.reason : 'left';
    endChat(`notice_partner_${reason}`, 'warn');
  }

  function onServerError(data) {
    if (data && data.code === 'replaced') onReplaced();
    else notifyError(data && data.code);
  }

  /** Our token was opened in another tab, which now has the chat. Reconnecting by ourselves
   * would take it back, and that tab would take it back again: wait for "Use here". */
  function onReplaced() {
    if (state.replaced) return;
    state.replaced = true;
    state.drainUntil = 0;
    clearTimeout(timers.reconnect);
    if (socket && (socket.connected || socket.active)) socket.disconnect();
    showConnectionBanner();
    renderControls();
  }

  function onUseHere() {
    state.replaced = false;
    showConnectionBanner();
    reconnectNow();
    const home = { chatting: ui.input, ended: ui.findNewBtn, waiting: ui.log }[state.phase] || ui.startBtn;
    ensureFocus(home, [ui.bannerAction]);
  }

  /** The worker is about to restart: move now rather than wait for it to close on us. */
  function onDraining() {
    if (state.replaced || !isOnline()) return;
    state.drainUntil = Date.now() + DRAIN_QUIET_MS;
    state.drainTries = 0;
    reconnectNow();
  }

  /** While moving, a failed or closed connection (it may have reached the stopping worker
   * again) is tried again at once, a few times; false when the move is over or given up. */
  function drainRetry() {
    if (Date.now() >= state.drainUntil || state.drainTries >= DRAIN_RETRIES) {
      state.drainUntil = 0;
      return false;
    }
    state.drainTries += 1;
    clearTimeout(timers.reconnect);
    timers.reconnect = setTimeout(reconnectNow, 0);  // not from inside socket.io's own handler
    return true;
  }

  // ---------------------------------------------------------------- connection

  function onConnect() {
    state.everConnected = true;
    state.refusals = 0;
    clearTimeout(timers.reconnect);
    hideBanner();
    renderControls();
  }

  function onDisconnect(reason) {
    typingOut.on = false;
    clearTimeout(timers.typingIdle);
    hidePartnerTyping();
    ui.online.classList.remove('is-live');
    showConnectionBanner();
    // a drain is a planned move: the short banner is all there is to see of it
    let moving = false;
    if (state.drainUntil && !state.replaced && !state.netOffline) {
      moving = reason === 'io client disconnect' ? Date.now() < state.drainUntil : drainRetry();
    }
    if (!state.replaced && !moving) noteConnectionLost();
    // socket.io won't retry this one; nor must we when another tab took the chat over
    if (reason === 'io server disconnect' && !state.replaced && !state.netOffline && !moving) {
      scheduleReconnect();
    }
    renderControls();
  }

  /** Says once in the log that the link is gone; "reconnected" follows after the next hello. */
  function noteConnectionLost() {
    if (state.phase === 'idle' || state.offlineNoticed) return;
    state.offlineNoticed = true;
    state.lostNotice = addNotice(state.netOffline ? 'notice_offline' : 'notice_reconnecting', null, 'warn');
  }

  function onConnectError(err) {
    // 503 to the handshake: every server is full (or restarting); Socket.IO retries by itself.
    showConnectionBanner(Boolean(err && err.description === 503));
    if (state.drainUntil) {
      if (drainRetry()) return;
      noteConnectionLost();  // the quiet move did not work out: say so as for any lost link
    }
    if (socket.active || state.replaced || state.netOffline) return;  // socket.io retries by itself
    if (err && err.data && err.data.code === 'rate_limited') {
      // Reconnecting too often (the server limits reconnects per user): the token is fine,
      // come back a little later as the same user.
      clearTimeout(timers.reconnect);
      timers.reconnect = setTimeout(() => { if (!socket.connected) socket.connect(); },
                                    RATE_LIMITED_RETRY_MS);
      return;
    }
    // Refused by the server: retry with a backoff; after a few refusals drop the token,
    // which may be what is refused, and come back as a new user.
    state.refusals += 1;
    if (state.refusals >= 3) storageSet(sessionStorage, TOKEN_KEY, null);
    scheduleReconnect();
  }

  function scheduleReconnect() {
    clearTimeout(timers.reconnect);
    const delay = Math.min(30000, 1000 * 2 ** Math.min(state.refusals, 5));
    timers.reconnect = setTimeout(() => {
      if (!socket.connected && !state.replaced && !state.netOffline) socket.connect();
    }, delay);
  }

  /** A new connection at once, with the same token and `since` (authPayload): cuts short
   * socket.io's back-off, or moves a live connection off a worker that is draining. */
  function reconnectNow() {
    if (!socket || state.replaced || state.netOffline) return;
    clearTimeout(timers.reconnect);
    if (socket.connected || socket.active) socket.disconnect();
    socket.connect();
  }

  /** The browser lost its network: hold sends rather than write into a dead socket, and stop
   * socket.io's retries, which cannot succeed before `online`. */
  function onNetOffline() {
    state.netOffline = true;
    state.drainUntil = 0;
    clearTimeout(timers.reconnect);
    if (socket && (socket.connected || socket.active)) socket.disconnect();
    // the socket may have noticed first: its "reconnecting" line now says why
    if (state.offlineNoticed && state.lostNotice && state.lostNotice.isConnected) {
      setText(state.lostNotice, 'notice_offline');
    }
    showConnectionBanner();
    renderControls();
  }

  /** The network is back: connect now (socket.io's back-off may be many seconds away); what was
   * held goes out after the hello (resendOutbox). */
  function onNetOnline() {
    state.netOffline = false;
    if (!isOnline()) {
      showConnectionBanner();
      reconnectNow();
    }
    renderControls();
  }

  /** Sent on every (re)connection, so each one carries the current token and seq. */
  function authPayload() {
    const auth = { since: state.lastSeq };
    const token = storageGet(sessionStorage, TOKEN_KEY);
    if (token) auth.token = token;
    return auth;
  }

  function connect() {
    if (typeof window.io !== 'function') {
      showBanner('banner_connecting');
      finishBoot();
      return;
    }
    // offline at load: the socket is made but waits for `online` (onNetOnline connects it)
    socket = window.io({ auth: (cb) => cb(authPayload()), autoConnect: !state.netOffline });
    if (state.netOffline) showConnectionBanner();
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

  // ---------------------------------------------------------------- interests input

  /** Adds interests from `parts`; returns the parts that could not be added and why. */
  function absorbInterests(parts) {
    const rest = [];
    let error = null;
    for (const raw of parts) {
      const name = raw.trim();
      if (!name) continue;
      if (state.interests.some((i) => i.toLowerCase() === name.toLowerCase())) continue;
      if (codePoints(name) > MAX_INTEREST_LEN) {
        error = 'interests_too_long';
        rest.push(name);
      } else if (state.interests.length >= MAX_INTERESTS) {
        error = error || 'interests_too_many';
        rest.push(name);
      } else {
        state.interests.push(name);
      }
    }
    return { rest, error };
  }

  /** Turns everything typed in the interests field into chips; false when some is refused. */
  function commitInterestDraft() {
    const { rest, error } = absorbInterests(ui.interestsInput.value.split(SEPARATORS));
    ui.interestsInput.value = rest.join(', ');
    interestsChanged(error);
    return !error;
  }

  function interestsChanged(error) {
    renderChips();
    storageSet(localStorage, INTERESTS_KEY, JSON.stringify(state.interests));
    ui.interestsBox.classList.toggle('is-invalid', Boolean(error));
    ui.interestsInput.setAttribute('aria-invalid', String(Boolean(error)));
    if (error) setText(ui.interestsError, error);
    ui.interestsError.hidden = !error;
  }

  function renderChips() {
    const chips = state.interests.map((name, index) => {
      const li = document.createElement('li');
      li.className = 'chip';
      const label = document.createElement('span');
      label.className = 'chip__text';
      label.textContent = name;
      const remove = document.createElement('button');
      remove.type = 'button';
      remove.className = 'chip__remove';
      setAttrText(remove, 'aria-label', 'interests_remove', { name });
      remove.addEventListener('click', () => removeInterest(index));
      li.append(label, remove);
      return li;
    });
    ui.interestChips.replaceChildren(...chips);
    ui.interestChips.hidden = chips.length === 0;
  }

  function removeInterest(index) {
    state.interests.splice(index, 1);
    interestsChanged(null);
    ui.interestsInput.focus();
  }

  function onInterestsInput(event) {
    if (event.isComposing) return;
    const parts = ui.interestsInput.value.split(SEPARATORS);
    if (parts.length < 2) {
      if (!ui.interestsError.hidden) interestsChanged(null);
      return;
    }
    const unfinished = parts.pop().replace(/^\s+/, '');
    const { rest, error } = absorbInterests(parts);
    ui.interestsInput.value = rest.concat(unfinished).join(', ');
    interestsChanged(error);
  }

  function onInterestsKeydown(event) {
    if (event.isComposing || event.keyCode === 229) return;
    const input = ui.interestsInput;
    if (event.key === 'Enter' && input.value.trim()) {
      event.preventDefault();
      commitInterestDraft();
    } else if (event.key === 'Backspace' && !input.value && state.interests.length) {
      event.preventDefault();
      state.interests.pop();
      interestsChanged(null);
    }
  }

  function loadInterests() {
    try {
      const saved = JSON.parse(storageGet(localStorage, INTERESTS_KEY) || '[]');
      absorbInterests(stringList(saved));
    } catch (e) { /* ignore a damaged value */ }
    renderChips();
  }

  // ---------------------------------------------------------------- composer

  function onComposerChanged() {
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

  // ---------------------------------------------------------------- wiring

  function bindUi() {
    ui.langSelect.addEventListener('change', () => setLanguage(ui.langSelect.value, true));

    ui.startForm.addEventListener('submit', (event) => {
      event.preventDefault();
      if (commitInterestDraft()) startSearch();
      else ui.interestsInput.focus();
    });
    ui.interestsInput.addEventListener('input', onInterestsInput);
    ui.interestsInput.addEventListener('keydown', onInterestsKeydown);
    ui.interestsInput.addEventListener('blur', () => {
      if (ui.interestsInput.value.trim()) commitInterestDraft();
    });
    ui.interestsBox.addEventListener('click', (event) => {
      if (event.target === ui.interestsBox) ui.interestsInput.focus();
    });

    ui.composer.addEventListener('submit', (event) => {
      event.preventDefault();
      sendFromComposer();
      ui.input.focus();
    });
    ui.input.addEventListener('input', onComposerInput);
    ui.input.addEventListener('keydown', onComposerKeydown);

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

    ui.bannerAction.addEventListener('click', onUseHere);
    window.addEventListener('offline', onNetOffline);
    window.addEventListener('online', onNetOnline);

    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && state.unread) {
        state.unread = 0;
        updateTitle();
      }
    });
  }

  function init() {
    setLanguage(detectLanguage(), false);
    loadInterests();
    bindUi();
    onComposerChanged();
    state.booted = !hadTokenAtLoad;
    setPhase('idle');
    if (!state.booted) timers.boot = setTimeout(finishBoot, BOOT_GIVE_UP_MS);
    connect();
  }

  init();
})();
