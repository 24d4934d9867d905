"""The wire contract as pure code: frames, validation and errors. No I/O here.

The server, the SDK and the tests share this package, so that all three agree on
what a valid frame is.
"""
