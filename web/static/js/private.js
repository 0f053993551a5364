/* private.js — private rooms: "Private chat" makes a key (private_create) and waits for the
 * friend in the waiting state with the key and its link on screen; a key typed on the start
 * card, or a link /?room=KEY (or /#room=KEY) opened, joins (private_join). The chat that
 * follows is the same chat (its `matched` comes like any other); after it, Next looks for a
 * random stranger as usual. The key's alphabet and length come from the server (ui.js, common/limits.py). */
import { chat, IDLE, ENDED } from './state.js';
import { flags } from './flags.js';
import { ui, KEY_ALPHABET, KEY_LEN } from './ui.js';
import { setText } from './i18n.js';
import { hidePrivateError, notifyError, setBusy, showPrivateError } from './view.js';
import { isOnline, request } from './connection.js';
import { enterWaiting } from './flow.js';

const COPIED_MS = 2000;

/** A key as typed or pasted (spaces dropped, any case or width), or null when it cannot be one. */
export function normalizeKey(raw) {
  // NFKC: a key typed in full width (a Chinese or Japanese input method) is the same key
  const key = String(raw ?? '').normalize('NFKC').replace(/\s+/g, '').toUpperCase();
  if (key.length !== KEY_LEN) return null;
  for (const c of key) if (!KEY_ALPHABET.includes(c)) return null;
  return key;
}

function ready() {
  if (flags.busy) return false;
  if (!isOnline()) {
    showPrivateError(flags.replaced ? 'error_replaced' : 'error_offline');
    return false;
  }
  return true;
}

function createRoom() {
  if (!ready()) return;
  hidePrivateError();
  const about = chat.room;
  setBusy(true);
  request('private_create', {}, (res) => {
    setBusy(false);
    if (!res.ok) notifyError(res.code);
    else enterWaiting('search', { about, privateKey: res.key, privateExpires: res.expires });
  });
}

/** Join the room of `raw`; its `matched` shows the chat. */
export function joinRoom(raw) {
  const key = normalizeKey(raw);
  if (key === null) {
    showPrivateError('private_key_invalid');
    ui.privateKeyInput.focus();
    return;
  }
  if (!ready()) return;
  hidePrivateError();
  setBusy(true);
  request('private_join', { key }, (res) => {
    setBusy(false);
    if (!res.ok) {
      showPrivateError(`error_${res.code}`);
      if (chat.phase === IDLE) ui.privateKeyInput.focus();
    }
  });
}

/** A link /?room=KEY opened (or /#room=KEY: a fragment is never sent to the server): its key
 * waits for the connection (hello), and the address bar loses it at once, so a reload does not
 * join again and the key is not left in the history. */
export function takeRoomFromUrl() {
  const params = new URLSearchParams(window.location.search);
  const fragment = new URLSearchParams(window.location.hash.replace(/^#/, ''));
  if (!params.has('room') && !fragment.has('room')) return;
  flags.pendingRoom = fragment.has('room') ? fragment.get('room') : params.get('room');
  params.delete('room');
  fragment.delete('room');
  const rest = params.toString();
  const restHash = fragment.toString();
  window.history.replaceState(null, '', window.location.pathname + (rest ? `?${rest}` : '') +
    (restHash ? `#${restHash}` : ''));
}

/** After hello: join the room of the link opened, unless a resumed chat is on screen. */
export function joinPendingRoom() {
  const key = flags.pendingRoom;
  if (key === null) return;
  flags.pendingRoom = null;
  if (chat.phase !== IDLE && chat.phase !== ENDED) return;
  ui.privateKeyInput.value = String(key).slice(0, 16);
  joinRoom(key);
}

function copyLink() {
  const link = ui.privateLink.value;
  const done = () => {
    setText(ui.privateCopyBtn, 'private_copied');
    setTimeout(() => setText(ui.privateCopyBtn, 'private_copy'), COPIED_MS);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(link).then(done, () => ui.privateLink.select());
  } else {
    ui.privateLink.select();
  }
}

export function bindPrivate() {
  // a /#room=KEY link opened in a tab already showing the page changes only the fragment
  window.addEventListener('hashchange', () => {
    takeRoomFromUrl();
    if (flags.pendingRoom !== null && isOnline()) joinPendingRoom();
  });
  ui.privateCreateBtn.addEventListener('click', createRoom);
  ui.privateForm.addEventListener('submit', (event) => {
    event.preventDefault();
    joinRoom(ui.privateKeyInput.value);
  });
  ui.privateCopyBtn.addEventListener('click', copyLink);
  ui.privateLink.addEventListener('focus', () => ui.privateLink.select());
}
