"""What the web workers and the matcher both use: config, Redis keys and scripts, the protocol.

`web` and `matcher` never import each other; everything they must agree on lives here.
"""
