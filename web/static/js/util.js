/* util.js — small pure helpers the other modules share (storage that never throws, code-point
 * lengths, ids, seqs, times). No DOM, no page state. */

export function intFrom(value, fallback) {
  const n = parseInt(value, 10);
  return Number.isFinite(n) && n > 0 ? n : fallback;
}

export function noop() {}

export function storageGet(store, key) {
  try { return store.getItem(key); } catch (e) { return null; }
}

export function storageSet(store, key, value) {
  try {
    if (value === null) store.removeItem(key); else store.setItem(key, value);
  } catch (e) { /* private mode or full: the page still works, it just forgets */ }
}

/** Length in code points, the way the server (Python len) counts. */
export function codePoints(text) {
  return Array.from(text).length;
}

/** A message's client id. crypto.getRandomValues exists in every browser that runs ES modules;
 * randomUUID only in secure contexts (a plain-HTTP address other than localhost has none). */
export function newId() {
  if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export function toSeq(value) {
  const n = Number(value);
  return Number.isInteger(n) && n > 0 ? n : null;
}

export function clockTime(ts) {
  const date = new Date(Number.isFinite(Number(ts)) ? Number(ts) : Date.now());
  const pad = (n) => String(n).padStart(2, '0');
  return { text: `${pad(date.getHours())}:${pad(date.getMinutes())}`, iso: date.toISOString() };
}

export function stringList(value) {
  return Array.isArray(value) ? value.filter((v) => typeof v === 'string' && v.trim()) : [];
}

/** A moment (ms) as a date and time in the page's language and the viewer's time zone; '' when
 * it is not a time. */
export function dateTime(ms) {
  const when = new Date(Number(ms));
  return Number.isFinite(when.getTime())
    ? when.toLocaleString(document.documentElement.lang || undefined,
      { dateStyle: 'medium', timeStyle: 'short' })
    : '';
}
