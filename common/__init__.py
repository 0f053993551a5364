"""What several processes use: settings, limits, Redis keys, clients and scripts, the store, event
names, the daemon loop, and the history in SQL (`history/`).

`web`, `matcher` and `archiver` never import each other; everything they must agree on lives here.
"""
