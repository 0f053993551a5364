"""The page's state machine (web/static/js/state.js), loaded as the page loads it: its table of
transitions and the rules that make it ignore stale events. No second browser, no chat: fast.
Also that every module of the page comes with the static version (the import map)."""
from __future__ import annotations

IDLE, WAITING, CHATTING, ENDED = "idle", "waiting", "chatting", "ended"
STATES = [IDLE, WAITING, CHATTING, ENDED]

# event -> the state it leads to from idle, waiting, chatting, ended (None: ignored)
EXPECTED = {
    "search":           [WAITING, None, WAITING, WAITING],
    "waiting":          [WAITING, None, None, WAITING],
    "resumed_waiting":  [WAITING, None, WAITING, WAITING],
    "resumed_idle":     [None, IDLE, ENDED, None],
    "matched":          [CHATTING, CHATTING, CHATTING, CHATTING],
    "resumed_chat":     [CHATTING, CHATTING, CHATTING, CHATTING],
    "partner_left":     [None, None, ENDED, None],
    "leave":            [None, IDLE, ENDED, None],
    "session_lost":     [None, ENDED, ENDED, None],
    "change_interests": [None, None, None, IDLE],
}

TABLE_JS = """async (events) => {
  const m = await import('/static/js/state.js');
  const table = {};
  for (const e of events.concat(['no_such_event'])) {
    table[e] = m.STATES.map((s) => m.transition(s, e));
  }
  return { states: m.STATES, table };
}"""

# One chat through its life; each step returns [what fire() gave, phase, room, lastSeq, lastRoom].
RULES_JS = """async () => {
  const { createChat } = await import('/static/js/state.js');
  const chat = createChat();
  const steps = {};
  const step = (name, event, info) => {
    const change = chat.fire(event, info);
    steps[name] = [change && change.to, chat.phase, chat.room, chat.lastSeq, chat.lastRoom];
  };
  step('join acked', 'search', { about: null });
  step('matched r1', 'matched', { room: 'r1', pairedAt: 1000 });
  chat.remember(1); chat.remember(3);
  steps['seq gap'] = [chat.lastSeq, chat.seen(3), chat.seen(2)];
  chat.remember(2);
  steps['seq filled'] = [chat.lastSeq];
  step('matched r1 again', 'matched', { room: 'r1', pairedAt: 1000 });
  step('late waiting', 'waiting');
  step('old snapshot', 'resumed_waiting', { at: 999 });
  step('old partner_left', 'partner_left', { about: 'r0' });
  step('same-room snapshot', 'resumed_chat', { room: 'r1' });
  step('partner_left r1', 'partner_left', { about: 'r1' });
  step('find new acked', 'search', { about: null });
  step('matched r2', 'matched', { room: 'r2', pairedAt: 2000 });
  chat.remember(1);
  step('late matched r1', 'matched', { room: 'r1', pairedAt: 1000 });
  step('an older next acked', 'search', { about: 'r0' });
  step('next acked', 'search', { about: 'r2' });
  step('snapshot: chatting r3', 'resumed_chat', { room: 'r3' });
  step('newer snapshot: idle', 'resumed_idle', { at: 5000 });
  step('late matched, ended', 'matched', { room: 'r0', pairedAt: 1500 });
  step('change interests', 'change_interests');
  step('unknown', 'no_such_event');
  return steps;
}"""


async def test_the_transition_table(people):
    person = await people(worker=0)
    got = await person.page.evaluate(TABLE_JS, list(EXPECTED))
    assert got["states"] == STATES
    assert got["table"] == {**EXPECTED, "no_such_event": [None] * 4}


async def test_the_machine_ignores_stale_events_and_owns_the_room_and_seq(people):
    person = await people(worker=0)
    steps = await person.page.evaluate(RULES_JS)
    assert steps == {
        "join acked": [WAITING, WAITING, None, 0, None],
        "matched r1": [CHATTING, CHATTING, "r1", 0, "r1"],
        "seq gap": [1, True, False],                            # since = the unbroken run
        "seq filled": [3],
        "matched r1 again": [None, CHATTING, "r1", 3, "r1"],    # a repeat: nothing reset
        "late waiting": [None, CHATTING, "r1", 3, "r1"],        # overtaken by `matched`
        "old snapshot": [None, CHATTING, "r1", 3, "r1"],        # taken before r1 was paired
        "old partner_left": [None, CHATTING, "r1", 3, "r1"],    # about an earlier chat
        "same-room snapshot": [CHATTING, CHATTING, "r1", 3, "r1"],  # fills in, keeps the seqs
        "partner_left r1": [ENDED, ENDED, None, 0, "r1"],       # lastRoom stays for a report
        "find new acked": [WAITING, WAITING, None, 0, "r1"],
        "matched r2": [CHATTING, CHATTING, "r2", 0, "r2"],
        "late matched r1": [None, CHATTING, "r2", 1, "r2"],     # paired before r2: over
        "an older next acked": [None, CHATTING, "r2", 1, "r2"],
        "next acked": [WAITING, WAITING, None, 0, "r2"],
        "snapshot: chatting r3": [CHATTING, CHATTING, "r3", 0, "r3"],
        "newer snapshot: idle": [ENDED, ENDED, None, 0, "r3"],
        "late matched, ended": [None, ENDED, None, 0, "r3"],   # older than r2's: over
        "change interests": [IDLE, IDLE, None, 0, "r3"],
        "unknown": [None, IDLE, None, 0, "r3"],
    }


async def test_every_module_is_loaded_once_with_the_static_version(people):
    person = await people(worker=0)
    urls = await person.page.evaluate("""async () => {
      const bare = await import('/static/js/state.js');
      const main = [...document.scripts].find((s) => s.type === 'module').src;
      const versioned = await import('/static/js/state.js' + new URL(main).search);
      if (bare !== versioned) return null;  // two copies of the page's state
      return performance.getEntriesByType('resource').map((e) => e.name)
        .filter((name) => name.includes('/static/js/'));
    }""")
    assert urls is not None, "a relative import and the versioned URL gave two module instances"
    names = {u.split("/static/js/")[1].split("?")[0] for u in urls}
    assert {"main.js", "state.js", "connection.js", "view.js"} <= names
    assert all("?v=" in u for u in urls), urls
