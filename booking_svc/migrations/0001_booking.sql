-- The booking schema: appointments, the reservations of providers, rooms and equipment they
-- hold, idempotency keys, and the recent ACTIVE verifications the PENDING_VERIFICATION policy
-- relies on.
--
-- The guarantee against double booking is here, in constraints, not in application code:
-- every live reservation of one resource (a provider, a room, a piece of equipment) excludes
-- every other live reservation of it whose time range overlaps. Two transactions that try
-- to reserve overlapping time cannot both commit, whatever the code above them does.
--
-- PHI (visit reason, member id, demographics, cancellation note) is stored only as AES-GCM
-- ciphertext from common.crypto.FieldCipher, bound to its column and row by the AAD context.

CREATE TABLE appointments (
    id                      uuid PRIMARY KEY,
    organization_id         uuid NOT NULL,
    patient_id              text NOT NULL CHECK (patient_id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    provider_id             uuid NOT NULL,
    location_id             uuid NOT NULL,
    visit_type_id           uuid NOT NULL,
    start_time              timestamptz NOT NULL,
    end_time                timestamptz NOT NULL,
    time_zone               text NOT NULL,
    granule_minutes         integer NOT NULL CHECK (granule_minutes > 0),
    status                  text NOT NULL CHECK (status IN (
                                'BOOKED', 'PENDING_VERIFICATION', 'CHECKED_IN', 'COMPLETED',
                                'NO_SHOW', 'CANCELLED')),
    insurance_plan_id       text NOT NULL DEFAULT '',
    insurance_payer_id      text NOT NULL DEFAULT '',
    member_id_enc           bytea,
    visit_reason_enc        bytea,
    demographics_enc        bytea,
    eligibility_check_id    text NOT NULL DEFAULT '',
    eligibility_status      text NOT NULL DEFAULT '',
    eligibility_verified_at timestamptz,
    next_check_at           timestamptz,
    check_attempts          integer NOT NULL DEFAULT 0,
    cancellation_reason     text NOT NULL DEFAULT '',
    cancellation_note_enc   bytea,
    confirmation_code       text NOT NULL CHECK (confirmation_code ~ '^[A-Z2-9]{6}$'),
    booked_by               text NOT NULL,
    hold_id                 uuid,
    version                 bigint NOT NULL DEFAULT 1,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CHECK (end_time > start_time),
    CHECK ((status = 'CANCELLED') = (cancellation_reason <> '')),
    CHECK ((status = 'PENDING_VERIFICATION') <= (next_check_at IS NOT NULL))
);

CREATE INDEX appointments_patient ON appointments (patient_id, start_time, id);
CREATE INDEX appointments_provider ON appointments (provider_id, start_time);
CREATE INDEX appointments_recheck ON appointments (next_check_at)
    WHERE status = 'PENDING_VERIFICATION';
-- Confirmation codes are read out over the phone: unique among an organisation's live
-- appointments (finished ones may repeat a code).
CREATE UNIQUE INDEX appointments_confirmation_code ON appointments (organization_id, confirmation_code)
    WHERE status IN ('BOOKED', 'PENDING_VERIFICATION', 'CHECKED_IN');

-- One row per resource an appointment reserves: its provider, and each room and piece of
-- equipment. Released reservations are kept (with released_at) as history; only live ones
-- take part in the exclusion.
CREATE TABLE reservations (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    appointment_id uuid NOT NULL REFERENCES appointments (id),
    resource_id    uuid NOT NULL,
    resource_type  text NOT NULL CHECK (resource_type IN ('PROVIDER', 'ROOM', 'EQUIPMENT')),
    kind           text NOT NULL,
    during         tstzrange NOT NULL CHECK (NOT isempty(during) AND NOT lower_inf(during)
                                             AND NOT upper_inf(during)),
    released_at    timestamptz,
    CONSTRAINT reservations_no_overlap
        EXCLUDE USING gist (resource_id WITH =, during WITH &&) WHERE (released_at IS NULL)
);

CREATE INDEX reservations_appointment ON reservations (appointment_id) WHERE released_at IS NULL;
CREATE INDEX reservations_resource_day ON reservations (resource_id, lower(during));

-- Idempotency: one row per (scope, key). The scope keeps keys of different patients (and of
-- reschedules of different appointments) apart; the request digest is a keyed hash of the
-- whole request, so a reused key with another request is recognised without storing PHI.
-- The row is written in the same transaction as the appointment: a crash before commit
-- leaves neither, a crash after commit leaves both.
CREATE TABLE idempotency_keys (
    scope          text NOT NULL,
    key            text NOT NULL CHECK (char_length(key) BETWEEN 8 AND 128),
    request_digest bytea NOT NULL,
    appointment_id uuid NOT NULL REFERENCES appointments (id) DEFERRABLE INITIALLY DEFERRED,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- The latest ACTIVE answer per patient, payer and member (member id as a keyed hash): what a
-- booking falls back on, as PENDING_VERIFICATION, when the payer is slow or down.
CREATE TABLE verifications (
    patient_id    text NOT NULL,
    payer_id      text NOT NULL,
    member_digest bytea NOT NULL,
    check_id      text NOT NULL,
    verified_at   timestamptz NOT NULL,
    PRIMARY KEY (patient_id, payer_id, member_digest)
);
