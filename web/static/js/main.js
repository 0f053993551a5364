/* main.js — the entry module of the chat page (web/templates/index.html): binds the controls
 * to the modules and starts. The modules, each with its reason in its header:
 *   state.js (the state machine) · flags.js · ui.js · util.js · i18n.js · log.js · view.js ·
 *   composer.js · interests.js · flow.js · events.js · connection.js · attention.js ·
 *   prefs.js · private.js
 * Modules call each other only from functions run after this one has started (a few import
 * each other, which ES modules allow when nothing is used while they load). Every module URL is
 * versioned by the import map index.html carries (see web/app.py). */
import { flags } from './flags.js';
import { ui } from './ui.js';
import { detectLanguage, setLanguage } from './i18n.js';
import { bindAttention } from './attention.js';
import { bindLog } from './log.js';
import { bindPrefs } from './prefs.js';
import { finishBootIn, renderPhase } from './view.js';
import { bindComposer } from './composer.js';
import { bindInterests, commitInterestDraft, loadInterests } from './interests.js';
import { bindFlow, startSearch } from './flow.js';
import { connect, hadTokenAtLoad } from './connection.js';
import { bindPrivate, takeRoomFromUrl } from './private.js';

const BOOT_GIVE_UP_MS = 6000;  // show the page anyway when the server can't be reached

function bindUi() {
  ui.langSelect.addEventListener('change', () => setLanguage(ui.langSelect.value, true));
  ui.startForm.addEventListener('submit', (event) => {
    event.preventDefault();
    if (commitInterestDraft()) startSearch();
    else ui.interestsInput.focus();
  });
  bindInterests();
  bindComposer();
  bindFlow();
  bindAttention();
  bindLog();
  bindPrefs();
  bindPrivate();
}

takeRoomFromUrl();
setLanguage(detectLanguage(), false);
loadInterests();
bindUi();
flags.booted = !hadTokenAtLoad;
renderPhase();  // the chat starts idle (state.js)
if (!flags.booted) finishBootIn(BOOT_GIVE_UP_MS);
connect();

