"""Unit tests for PHI field encryption and blind indexes (common.crypto)."""

from __future__ import annotations

import base64
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.crypto import (
    BlindIndex,
    DecryptionError,
    FieldCipher,
    KeyRing,
    KeyRingError,
    field_context,
    key_id_of,
    normalize_email,
    normalize_identifier,
)

OLD_KEY = bytes(range(32))
NEW_KEY = bytes(range(100, 132))
APPOINTMENT_ID = uuid.UUID("6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b")
REASON_CONTEXT = field_context("booking.appointments.reason", APPOINTMENT_ID)
REASON = "follow-up after knee arthroscopy"


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


@pytest.fixture
def cipher() -> FieldCipher:
    return FieldCipher(KeyRing({"k2025b": OLD_KEY}, "k2025b"))


def test_encrypted_text_decrypts_to_the_original(cipher: FieldCipher) -> None:
    blob = cipher.encrypt(REASON, context=REASON_CONTEXT)

    assert cipher.decrypt_str(blob, context=REASON_CONTEXT) == REASON
    assert cipher.decrypt(blob, context=REASON_CONTEXT) == REASON.encode()


def test_ciphertext_does_not_contain_the_plaintext(cipher: FieldCipher) -> None:
    blob = cipher.encrypt(REASON, context=REASON_CONTEXT)

    assert REASON.encode() not in blob
    assert b"knee" not in blob


def test_ciphertext_layout_carries_version_and_key_id(cipher: FieldCipher) -> None:
    blob = cipher.encrypt(b"abc", context=REASON_CONTEXT)

    assert blob[0] == 1
    assert blob[1] == len("k2025b")
    assert blob[2:8] == b"k2025b"
    # header 8 + nonce 12 + 3 bytes of ciphertext + 16 bytes of tag
    assert len(blob) == 8 + 12 + 3 + 16
    assert key_id_of(blob) == "k2025b"


def test_same_plaintext_encrypts_differently_each_time(cipher: FieldCipher) -> None:
    first = cipher.encrypt(REASON, context=REASON_CONTEXT)
    second = cipher.encrypt(REASON, context=REASON_CONTEXT)

    assert first != second


def test_empty_plaintext_round_trips(cipher: FieldCipher) -> None:
    blob = cipher.encrypt(b"", context=REASON_CONTEXT)

    assert cipher.decrypt(blob, context=REASON_CONTEXT) == b""


def test_flipping_any_single_byte_is_rejected(cipher: FieldCipher) -> None:
    blob = cipher.encrypt(REASON, context=REASON_CONTEXT)

    for position in range(len(blob)):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        with pytest.raises(DecryptionError):
            cipher.decrypt(bytes(tampered), context=REASON_CONTEXT)


def test_ciphertext_copied_to_another_row_is_rejected(cipher: FieldCipher) -> None:
    blob = cipher.encrypt(REASON, context=REASON_CONTEXT)
    other_row = field_context("booking.appointments.reason", uuid.uuid4())

    with pytest.raises(DecryptionError, match="failed authentication"):
        cipher.decrypt(blob, context=other_row)


def test_ciphertext_copied_to_another_column_is_rejected(cipher: FieldCipher) -> None:
    blob = cipher.encrypt(REASON, context=REASON_CONTEXT)
    other_column = field_context("booking.appointments.notes", APPOINTMENT_ID)

    with pytest.raises(DecryptionError):
        cipher.decrypt(blob, context=other_column)


@pytest.mark.parametrize("length", [0, 1, 10, 30, 8 + 12 + 15])
def test_truncated_ciphertext_is_rejected(cipher: FieldCipher, length: int) -> None:
    blob = cipher.encrypt(REASON, context=REASON_CONTEXT)

    with pytest.raises(DecryptionError, match="truncated"):
        cipher.decrypt(blob[:length], context=REASON_CONTEXT)


def test_ciphertext_cut_inside_the_tag_is_rejected(cipher: FieldCipher) -> None:
    blob = cipher.encrypt(REASON, context=REASON_CONTEXT)

    with pytest.raises(DecryptionError):
        cipher.decrypt(blob[:-1], context=REASON_CONTEXT)


def test_unknown_key_id_is_rejected_by_name() -> None:
    writer = FieldCipher(KeyRing({"k2027z": NEW_KEY}, "k2027z"))
    reader = FieldCipher(KeyRing({"k2025b": OLD_KEY}, "k2025b"))
    blob = writer.encrypt(REASON, context=REASON_CONTEXT)

    with pytest.raises(DecryptionError, match="'k2027z' is not in the key ring"):
        reader.decrypt(blob, context=REASON_CONTEXT)


def test_same_key_id_with_a_different_key_is_rejected() -> None:
    writer = FieldCipher(KeyRing({"k1": OLD_KEY}, "k1"))
    reader = FieldCipher(KeyRing({"k1": NEW_KEY}, "k1"))
    blob = writer.encrypt(REASON, context=REASON_CONTEXT)

    with pytest.raises(DecryptionError, match="failed authentication"):
        reader.decrypt(blob, context=REASON_CONTEXT)


def test_unsupported_format_version_is_rejected(cipher: FieldCipher) -> None:
    blob = bytearray(cipher.encrypt(REASON, context=REASON_CONTEXT))
    blob[0] = 2

    with pytest.raises(DecryptionError, match="version 2"):
        cipher.decrypt(bytes(blob), context=REASON_CONTEXT)


def test_decryption_errors_never_carry_plaintext_or_key(cipher: FieldCipher) -> None:
    blob = cipher.encrypt(REASON, context=REASON_CONTEXT)
    wrong = field_context("booking.appointments.reason", "other")

    with pytest.raises(DecryptionError) as caught:
        cipher.decrypt(blob, context=wrong)

    message = str(caught.value)
    assert "knee" not in message
    assert b64(OLD_KEY) not in message
    assert OLD_KEY.hex() not in message


def test_binary_plaintext_read_as_text_fails_without_echoing_it(cipher: FieldCipher) -> None:
    blob = cipher.encrypt(b"\xffsecret\xfe", context=REASON_CONTEXT)

    with pytest.raises(DecryptionError, match="not UTF-8") as caught:
        cipher.decrypt_str(blob, context=REASON_CONTEXT)

    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_data_written_under_old_key_decrypts_after_rotation_and_rewraps_to_new_key() -> None:
    before = FieldCipher(KeyRing({"k2025b": OLD_KEY}, "k2025b"))
    stored = before.encrypt(REASON, context=REASON_CONTEXT)
    rotated = FieldCipher(KeyRing({"k2025b": OLD_KEY, "k2026a": NEW_KEY}, "k2026a"))

    assert rotated.decrypt_str(stored, context=REASON_CONTEXT) == REASON
    assert rotated.needs_rewrap(stored)

    rewrapped = rotated.rewrap(stored, context=REASON_CONTEXT)

    assert key_id_of(rewrapped) == "k2026a"
    assert not rotated.needs_rewrap(rewrapped)
    assert rotated.decrypt_str(rewrapped, context=REASON_CONTEXT) == REASON
    # Once every row is re-wrapped the old key can leave the ring.
    after = FieldCipher(KeyRing({"k2026a": NEW_KEY}, "k2026a"))
    assert after.decrypt_str(rewrapped, context=REASON_CONTEXT) == REASON
    with pytest.raises(DecryptionError):
        after.decrypt(stored, context=REASON_CONTEXT)


def test_new_encryptions_use_the_active_key() -> None:
    ring = KeyRing({"k2025b": OLD_KEY, "k2026a": NEW_KEY}, "k2026a")

    blob = FieldCipher(ring).encrypt(REASON, context=REASON_CONTEXT)

    assert key_id_of(blob) == "k2026a"


def test_rewrap_with_wrong_context_is_rejected() -> None:
    rotated = FieldCipher(KeyRing({"k2025b": OLD_KEY, "k2026a": NEW_KEY}, "k2026a"))
    stored = FieldCipher(KeyRing({"k2025b": OLD_KEY}, "k2025b")).encrypt(
        REASON, context=REASON_CONTEXT
    )

    with pytest.raises(DecryptionError):
        rotated.rewrap(stored, context=field_context("booking.appointments.reason", "x"))


def test_empty_context_is_refused(cipher: FieldCipher) -> None:
    with pytest.raises(ValueError, match="context"):
        cipher.encrypt(REASON, context=b"")


@given(plaintext=st.binary(max_size=4096), context=st.binary(min_size=1, max_size=128))
def test_any_bytes_round_trip_under_any_context(plaintext: bytes, context: bytes) -> None:
    cipher = FieldCipher(KeyRing({"k1": OLD_KEY}, "k1"))

    assert cipher.decrypt(cipher.encrypt(plaintext, context=context), context=context) == plaintext


@given(text=st.text(max_size=512))
def test_any_text_round_trips(text: str) -> None:
    cipher = FieldCipher(KeyRing({"k1": OLD_KEY}, "k1"))

    blob = cipher.encrypt(text, context=REASON_CONTEXT)

    assert cipher.decrypt_str(blob, context=REASON_CONTEXT) == text


def test_key_ring_parses_spec_with_several_keys() -> None:
    spec = f"k2025b:{b64(OLD_KEY)}, k2026a:{b64(NEW_KEY)}"

    ring = KeyRing.parse(spec, active="k2026a")

    assert ring.active_kid == "k2026a"
    assert ring.kids == {"k2025b", "k2026a"}
    assert KeyRing.parse(ring.export_spec(), active="k2026a").export_spec() == ring.export_spec()


def test_blob_from_parsed_ring_decrypts_with_equal_ring() -> None:
    spec = f"k2025b:{b64(OLD_KEY)}"
    blob = FieldCipher(KeyRing.parse(spec, "k2025b")).encrypt(REASON, context=REASON_CONTEXT)

    decrypted = FieldCipher(KeyRing({"k2025b": OLD_KEY}, "k2025b")).decrypt_str(
        blob, context=REASON_CONTEXT
    )

    assert decrypted == REASON


@pytest.mark.parametrize(
    ("spec", "active", "message"),
    [
        ("", "k1", "empty"),
        (" , ", "k1", "empty"),
        (b64(OLD_KEY), "k1", "entry 1 has no ':'"),
        (f"k1:{b64(OLD_KEY)},k1:{b64(NEW_KEY)}", "k1", "'k1' appears more than once"),
        ("k1:not base64!", "k1", "'k1' is not valid base64"),
        (f"k1:{b64(OLD_KEY[:16])}", "k1", "exactly 32 bytes, got 16"),
        (f"k1:{b64(OLD_KEY)}", "k2", "active key id 'k2' is not in the key ring"),
        (f"bad id:{b64(OLD_KEY)}", "bad id", "key id 'bad id' is invalid"),
        (f"{'k' * 33}:{b64(OLD_KEY)}", "k" * 33, "is invalid"),
    ],
)
def test_key_ring_spec_errors_say_what_is_wrong(spec: str, active: str, message: str) -> None:
    with pytest.raises(KeyRingError, match=message) as caught:
        KeyRing.parse(spec, active)

    assert b64(OLD_KEY) not in str(caught.value)


def test_key_ring_refuses_empty_mapping() -> None:
    with pytest.raises(KeyRingError, match="empty"):
        KeyRing({}, "k1")


def test_key_ring_repr_hides_keys() -> None:
    ring = KeyRing({"k1": OLD_KEY}, "k1")

    assert repr(ring) == "KeyRing(kids=['k1'], active='k1')"


def test_generated_rings_hold_distinct_random_keys() -> None:
    first, second = KeyRing.generate("dev"), KeyRing.generate("dev")

    assert first.active_kid == "dev"
    assert first.export_spec() != second.export_spec()
    blob = FieldCipher(first).encrypt(REASON, context=REASON_CONTEXT)
    with pytest.raises(DecryptionError):
        FieldCipher(second).decrypt(blob, context=REASON_CONTEXT)


def test_field_context_names_column_and_row() -> None:
    assert field_context("booking.appointments.reason", "42") == b"booking.appointments.reason:42"


@pytest.mark.parametrize("column", ["", "booking.appointments:reason", "Booking.Reason", "a..b"])
def test_field_context_refuses_ambiguous_column_names(column: str) -> None:
    with pytest.raises(ValueError, match="must be a dotted lower-case name"):
        field_context(column, "42")


def test_field_context_refuses_empty_row_id() -> None:
    with pytest.raises(ValueError, match="row_id"):
        field_context("booking.appointments.reason", "")


BLIND_KEY = bytes(range(200, 232))


def test_blind_index_is_deterministic_and_keyed() -> None:
    index = BlindIndex(BLIND_KEY)
    other = BlindIndex(bytes(32))

    first = index.digest("XJH123456789", purpose="patient.member_id")

    assert first == BlindIndex(BLIND_KEY).digest("XJH123456789", purpose="patient.member_id")
    assert len(first) == 32
    assert first != other.digest("XJH123456789", purpose="patient.member_id")
    assert first != index.digest("XJH123456788", purpose="patient.member_id")


def test_blind_index_separates_purposes() -> None:
    index = BlindIndex(BLIND_KEY)

    as_member_id = index.digest("12345", purpose="patient.member_id")
    as_phone = index.digest("12345", purpose="patient.phone")

    assert as_member_id != as_phone


def test_blind_index_applies_the_purpose_normalizer() -> None:
    index = BlindIndex(
        BLIND_KEY,
        normalizers={"patient.member_id": normalize_identifier, "patient.email": normalize_email},
    )

    member = index.digest("XJH123456789", purpose="patient.member_id")
    assert index.digest("  xjh 1234 5678 9\t", purpose="patient.member_id") == member
    assert index.digest("XJH-123456789", purpose="patient.member_id") != member
    email = index.digest("ana@example.org", purpose="patient.email")
    assert index.digest(" Ana@Example.ORG ", purpose="patient.email") == email


def test_blind_index_default_normalizer_trims_and_composes_unicode() -> None:
    index = BlindIndex(BLIND_KEY)

    composed = index.digest("Jos\u00e9", purpose="patient.family_name")

    assert index.digest(" Jose\u0301 ", purpose="patient.family_name") == composed
    assert index.digest("jos\u00e9", purpose="patient.family_name") != composed


def test_blind_index_refuses_short_key() -> None:
    with pytest.raises(KeyRingError, match="at least 32 bytes"):
        BlindIndex(bytes(31))


def test_blind_index_refuses_empty_value_and_bad_purpose() -> None:
    index = BlindIndex(BLIND_KEY)

    with pytest.raises(ValueError, match="empty"):
        index.digest("   ", purpose="patient.member_id")
    with pytest.raises(ValueError, match="purpose 'Member ID' is invalid"):
        index.digest("x", purpose="Member ID")
