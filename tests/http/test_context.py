"""The per-process JWKS copy (`Recent`): what it keeps, and what it refuses to keep."""

from __future__ import annotations

import time

from worker.http.context import Document, Recent


def test_a_copy_is_kept_for_its_seconds_only() -> None:
    recent = Recent(seconds=0.05)
    document = Document(b'{"keys":[]}', '"a"', None)
    recent.put("acme", document, recent.generation)
    assert recent.get("acme") == document
    time.sleep(0.06)
    assert recent.get("acme") is None


def test_a_read_begun_before_a_change_through_this_process_is_not_kept() -> None:
    recent = Recent(seconds=60.0)
    document = Document(b'{"keys":[]}', '"a"', None)
    begun = recent.generation
    recent.clear()  # a change made through this process while the read was in flight
    recent.put("acme", document, begun)
    assert recent.get("acme") is None
    recent.put("acme", document, recent.generation)
    assert recent.get("acme") == document


def test_headers_are_encoded_once_and_say_the_etag_and_length() -> None:
    document = Document(b'{"keys":[]}', '"a"', None)
    assert (b"etag", b'"a"') in document.headers_304
    assert (b"content-length", b"11") in document.headers_200
    assert not any(name == b"content-length" for name, _ in document.headers_304)
