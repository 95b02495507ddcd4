"""TLS: certificates and keys in, a checked server `ssl.SSLContext` out, and what a
finished handshake tells the application.

``context`` builds the server context (every file checked with ``cryptography``
first), ``reload`` rebuilds it on SIGHUP or a file change, ``facts`` turns a finished
handshake into environ keys and a ``peer.PeerIdentity``, ``refusals`` explains failed
handshakes in plain words, ``validity`` and ``pemkeys`` are the date and key helpers
the server, the client helper and the PKI share.
"""
