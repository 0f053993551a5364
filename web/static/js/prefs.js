/* prefs.js — opt-in alerts for a hidden tab, both off by default and remembered in
 * localStorage: a short sound on a new message (made with WebAudio, no file) and desktop
 * notifications (the browser's permission is asked only when the user turns them on). What
 * happened is told by attention.js. */
import { ui } from './ui.js';
import { setAttrText, t } from './i18n.js';
import { onAttention, pageHidden } from './attention.js';
import { storageGet, storageSet } from './util.js';

const SOUND_KEY = 'chat.sound';
const NOTIFY_KEY = 'chat.notify';
const NOTIFY_TEXT = { message: 'notify_message', matched: 'notify_matched', left: 'notify_left' };

const prefs = { sound: false, notify: false };
let audio = null;  // made on the user's click, so the browser lets it play later

function notificationsGranted() {
  return typeof window.Notification === 'function' && Notification.permission === 'granted';
}

function render() {
  ui.soundToggle.setAttribute('aria-pressed', String(prefs.sound));
  ui.notifyToggle.setAttribute('aria-pressed', String(prefs.notify));
  setAttrText(ui.soundToggle, 'title', prefs.sound ? 'sound_on' : 'sound_off');
  let key = prefs.notify ? 'notify_on' : 'notify_off';
  if (typeof window.Notification !== 'function') key = 'notify_unsupported';
  else if (!prefs.notify && Notification.permission === 'denied') key = 'notify_denied';
  setAttrText(ui.notifyToggle, 'title', key);
}

function setSound(on) {
  prefs.sound = on;
  storageSet(localStorage, SOUND_KEY, on ? '1' : null);
  if (on) audioContext();
  render();
}

function setNotify(on) {
  prefs.notify = on;
  storageSet(localStorage, NOTIFY_KEY, on ? '1' : null);
  render();
}

function audioContext() {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return null;
  try {
    if (!audio) audio = new Ctx();
    if (audio.state === 'suspended') audio.resume().catch(() => {});
  } catch (e) {
    audio = null;
  }
  return audio;
}

/** Two soft notes, a fifth apart. */
function chime() {
  const ctx = audioContext();
  if (!ctx) return;
  const start = ctx.currentTime + 0.01;
  [[660, 0], [990, 0.11]].forEach(([freq, offset]) => {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.type = 'sine';
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0.0001, start + offset);
    gain.gain.exponentialRampToValueAtTime(0.18, start + offset + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, start + offset + 0.22);
    osc.connect(gain).connect(ctx.destination);
    osc.start(start + offset);
    osc.stop(start + offset + 0.25);
  });
}

function notify(kind) {
  if (!notificationsGranted()) return;
  try {
    const note = new Notification(t('app_name'), { body: t(NOTIFY_TEXT[kind]), tag: 'strangers-chat' });
    note.onclick = () => {
      window.focus();
      note.close();
    };
  } catch (e) { /* some browsers only notify from a service worker: then there is none */ }
}

function onToggleNotify() {
  if (prefs.notify) {
    setNotify(false);
    return;
  }
  if (typeof window.Notification !== 'function') {
    render();
    return;
  }
  if (Notification.permission === 'granted') {
    setNotify(true);
    return;
  }
  // asked only now, on the user's click
  Promise.resolve(Notification.requestPermission())
    .then((answer) => setNotify(answer === 'granted'))
    .catch(() => setNotify(false));
}

export function bindPrefs() {
  prefs.sound = storageGet(localStorage, SOUND_KEY) === '1';
  // remembered on, but the permission is gone (revoked in the browser): off
  prefs.notify = storageGet(localStorage, NOTIFY_KEY) === '1' && notificationsGranted();
  ui.soundToggle.addEventListener('click', () => setSound(!prefs.sound));
  ui.notifyToggle.addEventListener('click', onToggleNotify);
  onAttention((kind) => {
    if (!pageHidden()) return;
    if (prefs.sound && kind === 'message') chime();
    if (prefs.notify && NOTIFY_TEXT[kind]) notify(kind);
  });
  render();
}
