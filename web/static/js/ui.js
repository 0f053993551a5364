/* ui.js — the page's elements by role, and the limits the server put on the <body> (rendered
 * by web/app.py from common/): one place that knows the ids in web/templates/index.html. */
import { intFrom } from './util.js';

const $ = (id) => document.getElementById(id);

export const MAX_LEN = intFrom(document.body.dataset.maxLen, 500);
export const MAX_INTERESTS = intFrom(document.body.dataset.maxInterests, 5);
export const MAX_INTEREST_LEN = intFrom(document.body.dataset.maxInterestLen, 24);
export const KEY_ALPHABET = document.body.dataset.privateKeyAlphabet || 'ABCDEFGHJKMNPQRSTUVWXYZ23456789';
export const KEY_LEN = intFrom(document.body.dataset.privateKeyLen, 8);

export const ui = {
  online: $('online'),
  onlineText: $('online-text'),
  langSelect: $('lang-select'),
  soundToggle: $('sound-toggle'),
  notifyToggle: $('notify-toggle'),
  banner: $('banner'),
  bannerText: $('banner-text'),
  bannerAction: $('banner-action'),
  loadingView: $('loading-view'),
  startView: $('start-view'),
  bannedView: $('banned-view'),
  bannedText: $('banned-text'),
  chatView: $('chat-view'),
  startForm: $('start-form'),
  interestsBox: $('interests-box'),
  interestChips: $('interest-chips'),
  interestsInput: $('interests-input'),
  interestsError: $('interests-error'),
  startError: $('start-error'),
  startBtn: $('start-btn'),
  privateCreateBtn: $('private-create-btn'),
  privateForm: $('private-form'),
  privateKeyInput: $('private-key-input'),
  privateJoinBtn: $('private-join-btn'),
  privateError: $('private-error'),
  privateShare: $('private-share'),
  privateKey: $('private-key'),
  privateLink: $('private-link'),
  privateCopyBtn: $('private-copy-btn'),
  chatStatus: $('chat-status'),
  sharedInterests: $('shared-interests'),
  waitInfo: $('wait-info'),
  waitTime: $('wait-time'),
  waitCount: $('wait-count'),
  log: $('log'),
  newPill: $('new-pill'),
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
