/* interests.js — the start screen's interests field: typed text becomes chips (split on
 * commas and the like, IME-safe), within the server's limits (MAX_INTERESTS, MAX_INTEREST_LEN
 * from the <body>), remembered in localStorage as a convenience. */
import { ui, MAX_INTERESTS, MAX_INTEREST_LEN } from './ui.js';
import { setText, setAttrText } from './i18n.js';
import { codePoints, storageGet, storageSet, stringList } from './util.js';

const INTERESTS_KEY = 'chat.interests';  // localStorage: the last interests
const SEPARATORS = /[,，、;；\n]/;

/** The interests chosen, in order. */
export const interests = [];

/** Adds interests from `parts`; returns the parts that could not be added and why. */
function absorbInterests(parts) {
  const rest = [];
  let error = null;
  for (const raw of parts) {
    const name = raw.trim();
    if (!name) continue;
    if (interests.some((i) => i.toLowerCase() === name.toLowerCase())) continue;
    if (codePoints(name) > MAX_INTEREST_LEN) {
      error = 'interests_too_long';
      rest.push(name);
    } else if (interests.length >= MAX_INTERESTS) {
      error = error || 'interests_too_many';
      rest.push(name);
    } else {
      interests.push(name);
    }
  }
  return { rest, error };
}

/** Turns everything typed in the interests field into chips; false when some is refused. */
export function commitInterestDraft() {
  const { rest, error } = absorbInterests(ui.interestsInput.value.split(SEPARATORS));
  ui.interestsInput.value = rest.join(', ');
  interestsChanged(error);
  return !error;
}

function interestsChanged(error) {
  renderChips();
  storageSet(localStorage, INTERESTS_KEY, JSON.stringify(interests));
  ui.interestsBox.classList.toggle('is-invalid', Boolean(error));
  ui.interestsInput.setAttribute('aria-invalid', String(Boolean(error)));
  if (error) setText(ui.interestsError, error);
  ui.interestsError.hidden = !error;
}

function renderChips() {
  const chips = interests.map((name, index) => {
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
  interests.splice(index, 1);
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
  } else if (event.key === 'Backspace' && !input.value && interests.length) {
    event.preventDefault();
    interests.pop();
    interestsChanged(null);
  }
}

export function loadInterests() {
  try {
    const saved = JSON.parse(storageGet(localStorage, INTERESTS_KEY) || '[]');
    absorbInterests(stringList(saved));
  } catch (e) { /* ignore a damaged value */ }
  renderChips();
}

export function bindInterests() {
  ui.interestsInput.addEventListener('input', onInterestsInput);
  ui.interestsInput.addEventListener('keydown', onInterestsKeydown);
  ui.interestsInput.addEventListener('blur', () => {
    if (ui.interestsInput.value.trim()) commitInterestDraft();
  });
  ui.interestsBox.addEventListener('click', (event) => {
    if (event.target === ui.interestsBox) ui.interestsInput.focus();
  });
}
