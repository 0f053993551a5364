"""The web worker: Flask app factory, Socket.IO events, the page.

Kept empty of imports: `python -m web` imports this package before web/__main__.py can
monkey-patch gevent, and nothing may load sockets or threads before that.
"""
