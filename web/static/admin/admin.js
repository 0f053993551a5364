/* admin.js — the admin console's behaviour (web/admin/templates/admin/*.html).
 * 1. Time zone: tells the server the browser's zone in the `tz` cookie (path /admin), unless the
 *    server has a fixed DISPLAY_TZ; reloads once when the page was rendered in another zone.
 * 2. Live numbers: polls /admin/api/live every few seconds while the tab is visible.
 * 3. Charts: draws the rooms/messages bar charts as SVG from the JSON the page embeds
 *    (#series-data); the same numbers are in the page's tables for screen readers.
 * Plain browser JavaScript, no library, no inline code (the CSP allows 'self' scripts only). */
(() => {
  'use strict';

  const POLL_MS = 3000;
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const body = document.body;

  // ---------------------------------------------------------------- time zone

  function readCookie(name) {
    for (const part of document.cookie.split(';')) {
      const [k, ...v] = part.trim().split('=');
      if (k === name) return v.join('=');
    }
    return null;
  }

  function syncTimeZone() {
    if (body.dataset.tzSource === 'config') return;  // the server's DISPLAY_TZ wins
    let tz = null;
    try { tz = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) { return; }
    if (!tz || !/^[A-Za-z0-9_+\-/]{1,64}$/.test(tz)) return;
    if (readCookie('tz') === tz) return;
    const secure = location.protocol === 'https:' ? '; secure' : '';
    document.cookie = `tz=${tz}; path=/admin; max-age=31536000; samesite=lax${secure}`;
    // Re-render once in the right zone if this page shows times (never loops: the cookie now
    // matches, and a zone the server refuses does not trigger a second reload in this tab).
    const showsTimes = document.querySelector('time, #series-data');
    const key = 'admin.tzReloaded';
    if (showsTimes && body.dataset.tz !== tz && !sessionStorage.getItem(key)) {
      sessionStorage.setItem(key, '1');
      location.reload();
    }
  }

  // ---------------------------------------------------------------- live numbers

  function startLive() {
    const status = document.getElementById('live-status');
    if (!status) return;
    const url = status.dataset.endpoint;
    const fields = ['online', 'waiting', 'chatting'];
    const els = Object.fromEntries(fields.map((f) => [f, document.getElementById('live-' + f)]));
    let timer = null;
    let stopped = false;

    // 24-hour HH:MM:SS in the zone the page's tables use (the server's choice: DISPLAY_TZ, the
    // browser's zone, or UTC; body[data-tz]), never the browser locale's 12-hour "1:05:09 PM"
    let clock;
    try {
      clock = new Intl.DateTimeFormat('en-GB', { timeZone: document.body.dataset.tz || 'UTC', hourCycle: 'h23', hour: '2-digit', minute: '2-digit', second: '2-digit' });
    } catch (e) {
      clock = new Intl.DateTimeFormat('en-GB', { timeZone: 'UTC', hourCycle: 'h23', hour: '2-digit', minute: '2-digit', second: '2-digit' });
    }
    const fmtTime = (ms) => {
      const part = Object.fromEntries(clock.formatToParts(new Date(ms)).map((p) => [p.type, p.value]));
      return `${part.hour}:${part.minute}:${part.second}`;
    };
    const timeEl = (ms) => {
      const el = document.createElement('time');
      el.id = 'live-time';
      el.dateTime = new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
      el.textContent = fmtTime(ms);
      return el;
    };

    async function poll() {
      timer = null;
      if (stopped) return;
      try {
        const res = await fetch(url, { credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' } });
        if (res.status === 401) {
          stopped = true;
          status.textContent = 'Signed out — reload the page to sign in again.';
          return;
        }
        if (!res.ok) throw new Error('HTTP ' + res.status);
        const data = await res.json();
        for (const f of fields) {
          els[f].textContent = Number(data[f]).toLocaleString('en-US');
          els[f].classList.remove('is-stale');
        }
        status.replaceChildren('Updated ', timeEl(data.at));
      } catch (e) {
        for (const f of fields) els[f].classList.add('is-stale');
        status.textContent = 'Live numbers unavailable, retrying…';
      }
      schedule();
    }

    function schedule() {
      if (!stopped && !timer && !document.hidden) timer = setTimeout(poll, POLL_MS);
    }

    document.addEventListener('visibilitychange', () => {
      if (document.hidden) {
        clearTimeout(timer);
        timer = null;
      } else if (!timer) {
        poll();
      }
    });
    schedule();
  }

  // ---------------------------------------------------------------- charts

  function svg(tag, attrs, parent) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    if (parent) parent.appendChild(el);
    return el;
  }

  function niceMax(v) {
    if (v <= 5) return Math.max(v, 1);
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function drawChart(container, data, key) {
    const buckets = data.buckets;
    // drawn at the container's own width, so the labels keep their size on a phone
    const W = Math.max(280, Math.round(container.clientWidth || 640)), H = 220, L = 44, R = 8, T = 10, B = 26;
    const plotW = W - L - R, plotH = H - T - B;
    const values = buckets.map((b) => b[key]);
    const max = niceMax(Math.max(0, ...values));
    const total = values.reduce((a, b) => a + b, 0);
    const unit = data.unit;

    container.textContent = '';
    const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', preserveAspectRatio: 'xMidYMid meet' }, container);
    const label = `${key === 'rooms' ? 'Rooms opened' : 'Messages'} per ${unit}, ${buckets.length} ${unit}s, ${total} in total, at most ${Math.max(0, ...values)} in one ${unit}`;
    root.setAttribute('aria-label', label);

    for (const frac of [0, 0.5, 1]) {
      const y = T + plotH - frac * plotH;
      svg('line', { x1: L, x2: W - R, y1: y, y2: y, class: 'grid' }, root);
      const t = svg('text', { x: L - 6, y: y + 4, 'text-anchor': 'end', class: 'axis-label' }, root);
      t.textContent = String(Math.round(frac * max * 10) / 10);
    }

    const slot = plotW / buckets.length;
    const gap = Math.min(4, slot * 0.18);
    const every = Math.ceil(buckets.length / Math.max(3, Math.min(8, Math.floor(plotW / 52))));
    const readout = container.parentElement.querySelector('.chart__readout') || (() => {
      const p = document.createElement('p');
      p.className = 'chart__readout';
      p.setAttribute('aria-hidden', 'true');
      container.parentElement.appendChild(p);
      return p;
    })();
    readout.textContent = '';

    buckets.forEach((b, i) => {
      const v = b[key];
      const h = v > 0 ? Math.max(1.5, (v / max) * plotH) : 0;
      const x = L + i * slot + gap / 2;
      const rect = svg('rect', {
        x: x.toFixed(2), y: (T + plotH - h).toFixed(2), width: Math.max(1, slot - gap).toFixed(2),
        height: h.toFixed(2), rx: 2, class: `bar bar--${key}`,
      }, root);
      const title = svg('title', {}, rect);
      title.textContent = `${b.title}: ${v}`;
      // a transparent full-height target makes small bars easy to hover
      const hit = svg('rect', { x: L + i * slot, y: T, width: slot, height: plotH, fill: 'transparent' }, root);
      hit.addEventListener('mouseenter', () => { readout.textContent = `${b.title}: ${v}`; });
      hit.addEventListener('mouseleave', () => { readout.textContent = ''; });
      if (i % every === 0 || buckets.length <= 8) {
        const t = svg('text', { x: L + i * slot + slot / 2, y: H - 8, 'text-anchor': 'middle', class: 'axis-label' }, root);
        t.textContent = b.label;
      }
    });
  }

  function startCharts() {
    const dataEl = document.getElementById('series-data');
    if (!dataEl) return;
    let series;
    try { series = JSON.parse(dataEl.textContent); } catch (e) { return; }
    const buttons = Array.from(document.querySelectorAll('.segmented__btn[data-span]'));
    const charts = Array.from(document.querySelectorAll('.chart__canvas[data-series]'));

    function show(span) {
      const data = series[span];
      if (!data) return;
      for (const btn of buttons) btn.setAttribute('aria-pressed', String(btn.dataset.span === span));
      for (const el of charts) drawChart(el, data, el.dataset.series);
      for (const el of document.querySelectorAll('[data-unit-label]')) el.textContent = `per ${data.unit}`;
    }

    let current = '24h';
    for (const btn of buttons) {
      btn.addEventListener('click', () => { current = btn.dataset.span; show(current); });
    }
    let resizeTimer = null;
    let lastWidth = charts.length ? charts[0].clientWidth : 0;
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        const w = charts.length ? charts[0].clientWidth : 0;
        if (w !== lastWidth) { lastWidth = w; show(current); }
      }, 150);
    });
    show(current);
  }

  syncTimeZone();
  startLive();
  startCharts();
})();
