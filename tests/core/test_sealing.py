from __future__ import annotations

import base64
import hashlib
import os
import pathlib
import stat
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core import ids
from worker.core.errors import ConfigError, SealError
from worker.core.sealing import (
    MasterKeys,
    generate_master_key,
    load_or_create_key_file,
    parse_master_keys,
)

OLD = bytes(range(32))
NEW = bytes(range(100, 132))
REALM = "rl_0v1zTHXhtNgmDaXaDYSAqx"
KEY = "jky_0vRHaJyOFdkV3QVJpUJqJQ"
SECRET = b"-----BEGIN PRIVATE KEY-----\nnot really\n-----END PRIVATE KEY-----\n"
OVERHEAD = 1 + 8 + 12 + 16


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


# --- master key text ------------------------------------------------------------------------


def test_generate_master_key_is_unpadded_base64url_of_32_bytes() -> None:
    text = generate_master_key()
    assert len(text) == 43
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert parse_master_keys(text) == [base64.urlsafe_b64decode(text + "=")]
    assert generate_master_key() != text


def test_parse_master_keys_keeps_order_and_strips_whitespace() -> None:
    text = f" {b64url(NEW)} ,\n{b64url(OLD)}\n"
    assert parse_master_keys(text) == [NEW, OLD]


@pytest.mark.parametrize(
    "encode",
    [
        lambda raw: base64.urlsafe_b64encode(raw).decode(),
        lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("="),
        lambda raw: base64.standard_b64encode(raw).decode(),
        lambda raw: base64.standard_b64encode(raw).decode().rstrip("="),
    ],
)
def test_parse_master_keys_accepts_both_alphabets_with_or_without_padding(
    encode: Callable[[bytes], str],
) -> None:
    raw = b"\xfb\xff" * 16  # encodes to '+' and '/' in the standard alphabet
    assert parse_master_keys(encode(raw)) == [raw]


@pytest.mark.parametrize("text", ["", "  ", "\n"])
def test_parse_master_keys_refuses_nothing(text: str) -> None:
    with pytest.raises(ConfigError, match="No master keys configured"):
        parse_master_keys(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{b64url(NEW)},", "Master key #2 is blank"),
        (f"{b64url(NEW)},,{b64url(OLD)}", "Master key #2 is blank"),
        (f"{b64url(NEW)},not*base64!", "Master key #2 is not valid base64"),
        ("A", "Master key #1 is not valid base64"),
        (f"{b64url(NEW)},{b64url(OLD)},{b64url(OLD[:16])}", "Master key #3 decodes to 16 bytes"),
        (b64url(OLD + b"x"), "Master key #1 decodes to 33 bytes"),
    ],
)
def test_parse_master_keys_names_the_bad_entry_not_its_value(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_master_keys(text)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)
    for entry in text.split(","):
        if entry:
            assert entry not in str(raised.value)


# --- key file -------------------------------------------------------------------------------


def test_key_file_is_created_with_mode_0600_and_reused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "var" / "nested" / "master.key"

    text, created = load_or_create_key_file(path)

    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == text + "\n"
    assert len(parse_master_keys(text)) == 1

    again, created_again = load_or_create_key_file(path)
    assert (again, created_again) == (text, False)


def test_existing_key_file_is_read_not_replaced(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "master.key"
    path.write_text(f"  {b64url(OLD)}\n\n")
    assert load_or_create_key_file(path) == (b64url(OLD), False)
    assert path.read_text() == f"  {b64url(OLD)}\n\n"


def test_empty_key_file_is_a_config_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "master.key"
    path.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_or_create_key_file(path)


# --- MasterKeys -----------------------------------------------------------------------------


@pytest.mark.parametrize("keys", [[], [OLD[:16]], [OLD, OLD + b"\x00"]])
def test_master_keys_need_at_least_one_key_of_32_bytes(keys: list[bytes]) -> None:
    with pytest.raises(ConfigError):
        MasterKeys(keys)


def test_from_text_parses_then_seals() -> None:
    master = MasterKeys.from_text(f"{b64url(NEW)},{b64url(OLD)}")
    sealed = master.seal(SECRET, realm_id=REALM, key_id=KEY)
    assert MasterKeys([NEW]).open(sealed, realm_id=REALM, key_id=KEY) == SECRET


def test_sealed_format() -> None:
    sealed = MasterKeys([OLD]).seal(SECRET, realm_id=REALM, key_id=KEY)
    assert sealed[0] == 0x01
    assert sealed[1:9] == hashlib.sha256(b"keyrotor-master-key" + OLD).digest()[:8]
    assert len(sealed) == OVERHEAD + len(SECRET)
    assert b"not really" not in sealed


def test_sealing_twice_gives_different_ciphertexts() -> None:
    master = MasterKeys([OLD])
    first = master.seal(SECRET, realm_id=REALM, key_id=KEY)
    second = master.seal(SECRET, realm_id=REALM, key_id=KEY)
    assert first != second
    assert first[9:21] != second[9:21]  # fresh nonce


@settings(max_examples=50)
@given(plaintext=st.binary(max_size=4096))
def test_seal_open_round_trip(plaintext: bytes) -> None:
    master = MasterKeys([OLD])
    sealed = master.seal(plaintext, realm_id=REALM, key_id=KEY)
    assert master.open(sealed, realm_id=REALM, key_id=KEY) == plaintext
    assert master.is_current(sealed)


def test_ciphertext_moved_to_another_key_id_does_not_open() -> None:
    master = MasterKeys([OLD])
    sealed = master.seal(SECRET, realm_id=REALM, key_id=KEY)
    other = ids.key_id()
    with pytest.raises(SealError) as raised:
        master.open(sealed, realm_id=REALM, key_id=other)
    assert str(raised.value) == f"key {other} does not open with the configured master keys"


def test_ciphertext_moved_to_another_realm_does_not_open() -> None:
    master = MasterKeys([OLD])
    sealed = master.seal(SECRET, realm_id=REALM, key_id=KEY)
    with pytest.raises(SealError):
        master.open(sealed, realm_id=ids.realm_id(), key_id=KEY)


def test_wrong_master_key_does_not_open() -> None:
    sealed = MasterKeys([OLD]).seal(SECRET, realm_id=REALM, key_id=KEY)
    with pytest.raises(SealError):
        MasterKeys([NEW]).open(sealed, realm_id=REALM, key_id=KEY)


def test_seal_error_never_carries_the_plaintext() -> None:
    sealed = MasterKeys([OLD]).seal(SECRET, realm_id=REALM, key_id=KEY)
    with pytest.raises(SealError) as raised:
        MasterKeys([OLD]).open(sealed[:-1], realm_id=REALM, key_id=KEY)
    assert "not really" not in str(raised.value)
    assert raised.value.__cause__ is None


@settings(max_examples=200)
@given(data=st.data())
def test_any_tampered_byte_fails(data: st.DataObject) -> None:
    master = MasterKeys([OLD])
    sealed = bytearray(master.seal(SECRET, realm_id=REALM, key_id=KEY))
    position = data.draw(st.integers(0, len(sealed) - 1), label="position")
    sealed[position] ^= data.draw(st.integers(1, 255), label="mask")
    with pytest.raises(SealError):
        master.open(bytes(sealed), realm_id=REALM, key_id=KEY)


@settings(max_examples=100)
@given(data=st.data())
def test_truncated_ciphertext_fails(data: st.DataObject) -> None:
    master = MasterKeys([OLD])
    sealed = master.seal(SECRET, realm_id=REALM, key_id=KEY)
    length = data.draw(st.integers(0, len(sealed) - 1), label="length")
    with pytest.raises(SealError):
        master.open(sealed[:length], realm_id=REALM, key_id=KEY)


@settings(max_examples=200)
@given(garbage=st.binary(max_size=200), keep_header=st.booleans())
def test_random_bytes_never_open(garbage: bytes, keep_header: bool) -> None:
    master = MasterKeys([OLD, NEW])
    if keep_header:  # a valid version and fingerprint, so decryption is really attempted
        garbage = master.seal(b"", realm_id=REALM, key_id=KEY)[:9] + garbage
    with pytest.raises(SealError):
        master.open(garbage, realm_id=REALM, key_id=KEY)


# --- rotation of master keys ----------------------------------------------------------------


def test_new_primary_opens_old_ciphertexts_and_rewrap_makes_them_current() -> None:
    sealed = MasterKeys([OLD]).seal(SECRET, realm_id=REALM, key_id=KEY)
    rotated = MasterKeys([NEW, OLD])

    assert rotated.open(sealed, realm_id=REALM, key_id=KEY) == SECRET
    assert not rotated.is_current(sealed)

    rewrapped = rotated.rewrap(sealed, realm_id=REALM, key_id=KEY)

    assert rotated.is_current(rewrapped)
    assert rotated.open(rewrapped, realm_id=REALM, key_id=KEY) == SECRET
    # Once everything is rewrapped the old key can go.
    assert MasterKeys([NEW]).open(rewrapped, realm_id=REALM, key_id=KEY) == SECRET
    with pytest.raises(SealError):
        MasterKeys([OLD]).open(rewrapped, realm_id=REALM, key_id=KEY)


def test_new_ciphertexts_are_sealed_under_the_first_key() -> None:
    sealed = MasterKeys([NEW, OLD]).seal(SECRET, realm_id=REALM, key_id=KEY)
    assert MasterKeys([NEW]).is_current(sealed)
    assert not MasterKeys([OLD, NEW]).is_current(sealed)


def test_rewrap_keeps_the_row_binding() -> None:
    master = MasterKeys([NEW, OLD])
    sealed = MasterKeys([OLD]).seal(SECRET, realm_id=REALM, key_id=KEY)
    with pytest.raises(SealError):
        master.rewrap(sealed, realm_id=REALM, key_id=ids.key_id())
    rewrapped = master.rewrap(sealed, realm_id=REALM, key_id=KEY)
    with pytest.raises(SealError):
        master.open(rewrapped, realm_id=ids.realm_id(), key_id=KEY)


def test_is_current_on_garbage_is_false() -> None:
    assert not MasterKeys([OLD]).is_current(b"")
    assert not MasterKeys([OLD]).is_current(os.urandom(64))
