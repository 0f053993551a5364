/* i18n.js — every visible string comes from the table embedded in the page (#i18n-data, from
 * web/i18n.json). Nodes keep their keys in data-i18n* attributes, so a language switch
 * re-translates the whole page, text added later included. Also the window title (with what attention.js tells of a hidden tab). */
import { storageGet, storageSet } from './util.js';
import { ui } from './ui.js';

const LANG_KEY = 'chat.lang';  // localStorage: the language picked in the switcher
const LANGS = ['en', 'zh-TW', 'zh-CN'];
const I18N_ATTRS = { placeholder: 'i18nPlaceholder', 'aria-label': 'i18nAriaLabel', title: 'i18nTitle' };
const I18N = JSON.parse(document.getElementById('i18n-data').textContent);

let lang = 'en';
let titleInfo = { unread: 0, mark: null };  // what happened while the tab was hidden (attention.js)

export function t(key, vars) {
  const table = I18N[lang] || I18N.en || {};
  let text = key in table ? table[key] : (I18N.en && I18N.en[key]) || key;
  if (vars) {
    text = text.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? formatVar(vars[name]) : whole));
  }
  return text;
}

function formatVar(value) {
  if (Array.isArray(value)) return value.join(t('list_separator'));
  if (typeof value === 'number') return value.toLocaleString(lang);
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
export function setText(node, key, vars) {
  node.dataset.i18n = key;
  setVars(node, vars);
  translateNode(node);
}

/** Gives a node a translated attribute (title, aria-label, placeholder). */
export function setAttrText(node, attr, key, vars) {
  node.dataset[I18N_ATTRS[attr]] = key;
  if (vars) setVars(node, vars);
  translateNode(node);
}

function applyI18n() {
  const selector = '[data-i18n], [data-i18n-placeholder], [data-i18n-aria-label], [data-i18n-title]';
  document.querySelectorAll(selector).forEach(translateNode);
  updateTitle();
}

export function errorKey(code) {
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

export function detectLanguage() {
  const saved = storageGet(localStorage, LANG_KEY);
  if (LANGS.includes(saved)) return saved;
  const prefs = navigator.languages && navigator.languages.length
    ? navigator.languages : [navigator.language];
  for (const tag of prefs) {
    const found = languageFromTag(tag);
    if (found) return found;
  }
  return 'en';
}

export function setLanguage(wanted, remember) {
  lang = LANGS.includes(wanted) ? wanted : 'en';
  document.documentElement.lang = lang;
  ui.langSelect.value = lang;
  if (remember) storageSet(localStorage, LANG_KEY, lang);
  applyI18n();
}

/** What the title tells of a hidden tab: `unread` messages and a `mark` key (title_matched,
 * title_left) or null (attention.js). */
export function setTitleInfo(info) {
  titleInfo = { unread: info.unread || 0, mark: info.mark || null };
  updateTitle();
}

function updateTitle() {
  let title = t('page_title');
  if (titleInfo.mark) title = t(titleInfo.mark, { title });
  document.title = titleInfo.unread ? t('title_unread', { n: titleInfo.unread, title }) : title;
}
