"""The rules and the crypto: pure code that imports nothing else of keyrotor.

No database, no Redis, no clock of its own: the shells pass `now` and every input in.
"""
