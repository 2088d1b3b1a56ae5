"""PHI field encryption (AES-256-GCM under a rotating key ring) and keyed blind indexes.

Ciphertext layout (version 1), stored as one `bytea` value per encrypted field::

    +---------+------------+-----------------+-------------+------------------------------+
    | version | kid length | kid (ASCII)     | nonce       | AES-GCM ciphertext || tag     |
    | 1 byte  | 1 byte (n) | n bytes, 1..32  | 12 bytes    | len(plaintext) + 16 bytes    |
    +---------+------------+-----------------+-------------+------------------------------+

The header (version, kid length, kid) and the caller's *context* are the GCM associated data,
so neither can be altered without the tag failing. The context names where the value lives
(`field_context("booking.appointments.reason", appointment_id)`); a ciphertext copied into
another row or column therefore fails to decrypt instead of silently showing the wrong
patient's data.

Because the key id travels inside each ciphertext, rotation needs no downtime: add the new key
to every process's ring, make it active, then re-wrap old rows at leisure (`FieldCipher.rewrap`);
the old key leaves the ring only once no row uses it.

Lookups of encrypted values (e.g. "find the patient with this member id") go through
`BlindIndex`: an HMAC-SHA-256 of the normalized value under a separate key, never the plaintext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
MAX_KID_LENGTH = 32
BLIND_INDEX_MIN_KEY_BYTES = 32

_KID_PATTERN = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_KID_LENGTH}}}")
_PURPOSE_PATTERN = re.compile(r"[a-z0-9_.-]{1,64}")
_COLUMN_PATTERN = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*")
# version + kid length + shortest kid + nonce + tag (an empty plaintext is still 16 bytes).
_MIN_BLOB_BYTES = 1 + 1 + 1 + NONCE_BYTES + TAG_BYTES


class KeyRingError(ValueError):
    """The key ring configuration is invalid (bad key id, key length, encoding, active id)."""


class DecryptionError(Exception):
    """A ciphertext could not be decrypted: truncated, tampered, wrong context or unknown key.

    Messages name the failure only; they never contain plaintext, ciphertext or key material.
    """


def field_context(column: str, row_id: str | UUID) -> bytes:
    """Associated data binding a ciphertext to one column of one row.

    `column` is `schema.table.column` (e.g. `booking.appointments.reason`); `row_id` is the
    row's primary key.
    """
    # No ':' in the column name, so `column:row` splits one way only.
    if not _COLUMN_PATTERN.fullmatch(column):
        raise ValueError(
            f"column {column!r} must be a dotted lower-case name like schema.table.col"
        )
    row = str(row_id)
    if not row:
        raise ValueError("row_id must not be empty")
    return f"{column}:{row}".encode()


def _check_kid(kid: str) -> None:
    if not isinstance(kid, str) or not _KID_PATTERN.fullmatch(kid):
        raise KeyRingError(
            f"key id {kid!r} is invalid: use 1-{MAX_KID_LENGTH} characters of A-Z, a-z, 0-9, _ or -"
        )


class KeyRing:
    """Named AES-256 keys: the active one encrypts, every one of them decrypts.

    The textual form read from configuration (see `parse`) is a comma-separated list of
    `kid:base64key` entries, e.g. `k2025b:<44 base64 chars>,k2026a:<44 base64 chars>`, where each
    key is 32 random bytes in standard base64 (`openssl rand -base64 32`) and key ids use
    1-32 characters of `A-Z a-z 0-9 _ -`.
    """

    __slots__ = ("_active", "_ciphers", "_keys")

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        if not keys:
            raise KeyRingError("key ring is empty: at least one key is required")
        for kid, key in keys.items():
            _check_kid(kid)
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                size = len(key) if isinstance(key, bytes) else type(key).__name__
                raise KeyRingError(f"key {kid!r} must be exactly {KEY_BYTES} bytes, got {size}")
        if active not in keys:
            raise KeyRingError(f"active key id {active!r} is not in the key ring")
        self._keys: Mapping[str, bytes] = MappingProxyType(dict(keys))
        self._active = active
        self._ciphers = {kid: AESGCM(key) for kid, key in self._keys.items()}

    @classmethod
    def parse(cls, spec: str, active: str) -> KeyRing:
        """Build a ring from `kid1:base64key,kid2:base64key` (whitespace around entries ignored).

        Errors name the entry's position or key id, never the key text.
        """
        keys: dict[str, bytes] = {}
        entries = [entry.strip() for entry in spec.split(",")]
        if not any(entries):
            raise KeyRingError("key ring spec is empty")
        for position, entry in enumerate(entries, start=1):
            kid, separator, encoded = entry.partition(":")
            if not separator:
                raise KeyRingError(
                    f"key ring entry {position} has no ':' between the key id and the key"
                )
            kid = kid.strip()
            _check_kid(kid)
            if kid in keys:
                raise KeyRingError(f"key id {kid!r} appears more than once in the key ring")
            try:
                keys[kid] = base64.b64decode(encoded.strip(), validate=True)
            except binascii.Error as e:
                raise KeyRingError(f"key {kid!r} is not valid base64") from e
        return cls(keys, active)

    @classmethod
    def generate(cls, kid: str) -> KeyRing:
        """A ring with one fresh random key, for development stacks and tests."""
        return cls({kid: AESGCM.generate_key(bit_length=KEY_BYTES * 8)}, kid)

    def export_spec(self) -> str:
        """The `parse` form of this ring. It contains the keys: store it as a secret."""
        return ",".join(
            f"{kid}:{base64.b64encode(key).decode('ascii')}" for kid, key in self._keys.items()
        )

    @property
    def active_kid(self) -> str:
        return self._active

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        # Never the keys themselves: a repr ends up in logs and tracebacks.
        return f"KeyRing(kids={sorted(self._keys)!r}, active={self._active!r})"

    def _cipher(self, kid: str) -> AESGCM | None:
        return self._ciphers.get(kid)

    def _active_cipher(self) -> AESGCM:
        return self._ciphers[self._active]


def _header(kid: str) -> bytes:
    encoded = kid.encode("ascii")
    return bytes((FORMAT_VERSION, len(encoded))) + encoded


def _split_blob(blob: bytes) -> tuple[bytes, str, bytes, bytes]:
    """(header, kid, nonce, ciphertext-with-tag) of a version-1 blob, or DecryptionError."""
    if len(blob) < _MIN_BLOB_BYTES:
        raise DecryptionError("ciphertext is truncated")
    version, kid_length = blob[0], blob[1]
    if version != FORMAT_VERSION:
        raise DecryptionError(f"unsupported ciphertext format version {version}")
    if not 1 <= kid_length <= MAX_KID_LENGTH:
        raise DecryptionError("ciphertext header has an invalid key id length")
    header_end = 2 + kid_length
    if len(blob) < header_end + NONCE_BYTES + TAG_BYTES:
        raise DecryptionError("ciphertext is truncated")
    # latin-1 maps every byte, so a corrupt id fails the pattern check below, not the decode.
    kid = blob[2:header_end].decode("latin-1")
    if not _KID_PATTERN.fullmatch(kid):
        raise DecryptionError("ciphertext header has an invalid key id")
    nonce_end = header_end + NONCE_BYTES
    return blob[:header_end], kid, blob[header_end:nonce_end], blob[nonce_end:]


def _check_context(context: bytes) -> None:
    if not isinstance(context, bytes) or not context:
        raise ValueError("context must be non-empty bytes naming the column and row")


class FieldCipher:
    """Encrypts and decrypts single field values under a `KeyRing` (AES-256-GCM).

    Nonces are 96 random bits per encryption. With random nonces one key should protect at
    most about 2**32 values before the collision risk becomes material (NIST SP 800-38D
    section 8.3); rotate the active key long before that.
    """

    __slots__ = ("_ring",)

    def __init__(self, keyring: KeyRing) -> None:
        self._ring = keyring

    @property
    def keyring(self) -> KeyRing:
        return self._ring

    def encrypt(self, plaintext: bytes | str, *, context: bytes) -> bytes:
        """Ciphertext of `plaintext` under the active key, bound to `context`."""
        _check_context(context)
        data = plaintext.encode("utf-8") if isinstance(plaintext, str) else plaintext
        header = _header(self._ring.active_kid)
        nonce = os.urandom(NONCE_BYTES)
        return header + nonce + self._ring._active_cipher().encrypt(nonce, data, header + context)

    def decrypt(self, blob: bytes, *, context: bytes) -> bytes:
        """The plaintext of `blob`, which must have been encrypted with the same `context`."""
        _check_context(context)
        header, kid, nonce, sealed = _split_blob(blob)
        cipher = self._ring._cipher(kid)
        if cipher is None:
            raise DecryptionError(f"ciphertext key id {kid!r} is not in the key ring")
        try:
            return cipher.decrypt(nonce, sealed, header + context)
        except InvalidTag as e:
            raise DecryptionError(
                "ciphertext failed authentication (tampered, wrong context or wrong key)"
            ) from e

    def decrypt_str(self, blob: bytes, *, context: bytes) -> str:
        """`decrypt` for values that were encrypted from `str`."""
        plaintext = self.decrypt(blob, context=context)
        try:
            return plaintext.decode("utf-8")
        except UnicodeDecodeError:
            # `from None`: the UnicodeDecodeError holds the whole plaintext in `.object`, and a
            # chained exception would carry it into tracebacks and error reporters.
            raise DecryptionError("decrypted value is not UTF-8 text") from None

    def rewrap(self, blob: bytes, *, context: bytes) -> bytes:
        """`blob` decrypted and encrypted again under the active key (fresh nonce)."""
        return self.encrypt(self.decrypt(blob, context=context), context=context)

    def needs_rewrap(self, blob: bytes) -> bool:
        """Whether `blob` was written under a key other than the active one."""
        return key_id_of(blob) != self._ring.active_kid


def key_id_of(blob: bytes) -> str:
    """The key id recorded in a ciphertext's header (not authenticated until decryption)."""
    return _split_blob(blob)[1]


Normalizer = Callable[[str], str]


def normalize_text(value: str) -> str:
    """Default normalization: Unicode NFC and surrounding whitespace removed."""
    return unicodedata.normalize("NFC", value).strip()


def normalize_identifier(value: str) -> str:
    """For member ids and similar codes: NFKC, all whitespace removed, upper case.

    Cards and forms print the same id as `xjh 1234-5678` or `XJH12345678`; spaces and case
    are presentation, so they must not change the lookup digest. Hyphens are kept because
    some payers use them as part of the id.
    """
    return "".join(unicodedata.normalize("NFKC", value).split()).upper()


def normalize_email(value: str) -> str:
    """For e-mail addresses: NFKC, surrounding whitespace removed, lower case."""
    return unicodedata.normalize("NFKC", value).strip().lower()


class BlindIndex:
    """Keyed HMAC-SHA-256 digests for equality lookups of encrypted values.

    Each purpose (e.g. `patient.member_id`) gets its own subkey derived from the master key,
    so the same value indexed for two purposes yields unrelated digests and one column's
    index cannot be joined against another's. Values are normalized before hashing by the
    normalizer registered for the purpose (default `normalize_text`).
    """

    __slots__ = ("_key", "_normalizers", "_subkeys")

    def __init__(self, key: bytes, *, normalizers: Mapping[str, Normalizer] | None = None) -> None:
        if not isinstance(key, bytes) or len(key) < BLIND_INDEX_MIN_KEY_BYTES:
            raise KeyRingError(
                f"blind index key must be at least {BLIND_INDEX_MIN_KEY_BYTES} bytes"
            )
        for purpose in normalizers or {}:
            _check_purpose(purpose)
        self._key = key
        self._normalizers: Mapping[str, Normalizer] = dict(normalizers or {})
        self._subkeys: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"BlindIndex(purposes={sorted(self._normalizers)!r})"

    def digest(self, value: str, *, purpose: str) -> bytes:
        """The 32-byte digest of `value` (after normalization) for `purpose`."""
        normalized = self._normalizers.get(purpose, normalize_text)(value)
        if not normalized:
            raise ValueError(f"value for blind index purpose {purpose!r} is empty")
        return hmac.digest(self._subkey(purpose), normalized.encode("utf-8"), hashlib.sha256)

    def _subkey(self, purpose: str) -> bytes:
        subkey = self._subkeys.get(purpose)
        if subkey is None:
            _check_purpose(purpose)
            label = b"medsched.blind-index.v1:" + purpose.encode("ascii")
            subkey = hmac.digest(self._key, label, hashlib.sha256)
            self._subkeys[purpose] = subkey
        return subkey


def _check_purpose(purpose: str) -> None:
    if not isinstance(purpose, str) or not _PURPOSE_PATTERN.fullmatch(purpose):
        raise ValueError(
            f"blind index purpose {purpose!r} is invalid: use 1-64 characters of a-z, 0-9, _ . -"
        )
