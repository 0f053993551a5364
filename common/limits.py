"""Fixed limits of the protocol, the page and the history: constants, not settings.

Each is declared here once. They are not in common/config.py's SETTINGS because changing one is
not an operator's choice: the page (web/templates/index.html, web/static/js/) and the SQL schema
(common/history/models.py, with a migration) must change with it.
"""
from __future__ import annotations

MAX_INTERESTS = 5  # interests per user in `join`; the page's data-max-interests
MAX_INTEREST_LEN = 24  # characters per interest after trimming; the page's data-max-interest-len
MAX_REPORT_LEN = 200  # characters of a report's reason; the width of reports.reason
MAX_ID_LEN = 64  # characters of a message's client id; the width of messages.client_id
# A private room's key: 8 characters drawn with `secrets` from an alphabet without the ones
# read alike (0/O, 1/I/L): 31^8, about 8.5e11 keys. The page's data-private-key-* attributes.
PRIVATE_KEY_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
PRIVATE_KEY_LEN = 8
ROOM_KINDS = ("random", "private")  # rooms.kind in the history; the admin's filter
ROOM_KIND_LEN = 8  # the width of rooms.kind
CLOSE_REASON_LEN = 16  # characters of a room's close reason kept; the width of rooms.close_reason

# A web worker whose WORKER_ID matches this starts the Engine.IO session ids it issues with
# "<WORKER_ID>.", and nginx routes a session's requests to it by that prefix (web/guard.py
# name_sessions, nginx/nginx.conf.j2 $session_upstream; the names nginx knows are checked
# against it too). Letters, digits, '-' and '_' only: safe in a URL, a regex and an upstream name.
ROUTABLE_WORKER_ID = r"[A-Za-z0-9_-]{1,40}"
