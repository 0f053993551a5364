/* attention.js — what a hidden tab shows of what happened meanwhile: the title counts the
 * stranger's unread messages and marks a new chat or a stranger who left ("(2) • New stranger
 * · Strangers …"), and the favicon gets a badge (drawn on a canvas: a data: URL, which the
 * page's CSP allows as an image). Everything is cleared when the tab is seen again. */
import { setTitleInfo } from './i18n.js';

const BADGE_COLOR = '#e5484d';
const LOGO_COLOR = '#5b5bd6';
const LOGO_PATH = 'M6 4h20a4 4 0 0 1 4 4v12a4 4 0 0 1-4 4H14l-7 6v-6H6a4 4 0 0 1-4-4V8a4 4 0 0 1 4-4z';

const seen = { unread: 0, mark: null };  // mark: 'title_matched' or 'title_left'
let plainIcon = null;                    // the page's own favicon URL
const listeners = [];

/** Whether the user cannot see the page now. */
export function pageHidden() {
  return document.hidden === true;
}

/** fn(kind) for each thing noted while hidden ('message', 'matched', 'left'): sound.js. */
export function onAttention(fn) {
  listeners.push(fn);
}

function changed(kind) {
  setTitleInfo({ ...seen });
  drawIcon();
  for (const fn of listeners) {
    try { fn(kind); } catch (e) { /* a notifier's failure must not stop the chat */ }
  }
}

/** A message from the stranger arrived. */
export function noteMessage() {
  if (!pageHidden()) return;
  seen.unread += 1;
  changed('message');
}

/** A new chat began: the count starts again with it. */
export function noteMatched() {
  if (!pageHidden()) return;
  seen.unread = 0;
  seen.mark = 'title_matched';
  changed('matched');
}

/** The stranger left (what they wrote before stays counted). */
export function noteLeft() {
  if (!pageHidden()) return;
  seen.mark = 'title_left';
  changed('left');
}

export function clearAttention() {
  if (!seen.unread && !seen.mark) return;
  seen.unread = 0;
  seen.mark = null;
  setTitleInfo({ ...seen });
  drawIcon();
}

function iconLink() {
  return document.getElementById('favicon');
}

/** The logo with a red badge (the count, or a dot for a mark alone); the plain one when clear. */
function drawIcon() {
  const link = iconLink();
  if (!link) return;
  if (plainIcon === null) plainIcon = link.getAttribute('href');
  if (!seen.unread && !seen.mark) {
    link.setAttribute('href', plainIcon);
    return;
  }
  const canvas = document.createElement('canvas');
  canvas.width = 64;
  canvas.height = 64;
  const ctx = canvas.getContext('2d');
  if (!ctx || typeof Path2D !== 'function') return;
  ctx.scale(2, 2);
  ctx.fillStyle = LOGO_COLOR;
  ctx.fill(new Path2D(LOGO_PATH));
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.beginPath();
  ctx.arc(44, 20, 20, 0, Math.PI * 2);
  ctx.fillStyle = BADGE_COLOR;
  ctx.fill();
  ctx.lineWidth = 4;
  ctx.strokeStyle = '#ffffff';
  ctx.stroke();
  if (seen.unread) {
    const text = seen.unread > 9 ? '9+' : String(seen.unread);
    ctx.fillStyle = '#ffffff';
    ctx.font = `bold ${text.length > 1 ? 22 : 28}px sans-serif`;
    ctx.textAlign = 'center';
    ctx.textBaseline = 'middle';
    ctx.fillText(text, 44, 21);
  }
  link.setAttribute('href', canvas.toDataURL('image/png'));
}

export function bindAttention() {
  document.addEventListener('visibilitychange', () => {
    if (!pageHidden()) clearAttention();
  });
}
