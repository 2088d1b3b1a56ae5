-- Eligibility checks and the payer exchanges behind them (the audit trail).
--
-- PHI never lands here in clear text: the X12 bodies and each check's normalized outcome
-- (plan names, group numbers, payer messages) are AES-256-GCM ciphertexts from
-- common.crypto.FieldCipher, bound to their column and row (context
-- `eligibility.<table>.<column>:<primary key>`); the member id is kept only as a keyed
-- hash (common.crypto.BlindIndex, purpose `eligibility.member_id`) for audit look-ups.

CREATE TABLE exchanges (
    exchange_id uuid PRIMARY KEY,
    payer_id text NOT NULL,
    transport text NOT NULL CHECK (transport IN ('soap', 'mime')),
    started_at timestamptz NOT NULL,
    finished_at timestamptz,
    outcome text NOT NULL DEFAULT 'IN_FLIGHT' CHECK (
        outcome IN (
            'IN_FLIGHT', 'ANSWERED', 'TIMEOUT', 'UNAVAILABLE', 'CIRCUIT_OPEN',
            'INVALID_RESPONSE', 'ABANDONED'
        )
    ),
    -- Codes and numbers only (no payload content), for operators.
    description text NOT NULL DEFAULT '',
    payload_id text,
    attempts integer NOT NULL DEFAULT 0,
    http_status integer,
    core_error_code text,
    elapsed_ms double precision,
    request_x12 bytea NOT NULL,
    response_payload bytea,
    CHECK ((outcome = 'IN_FLIGHT') = (finished_at IS NULL))
);

CREATE INDEX exchanges_by_payer ON exchanges (payer_id, started_at);

CREATE TABLE checks (
    check_id uuid PRIMARY KEY,
    organization_id text NOT NULL,
    patient_id text NOT NULL,
    payer_id text NOT NULL,
    plan_id text NOT NULL DEFAULT '',
    appointment_id text NOT NULL DEFAULT '',
    service_type text NOT NULL,
    service_date date NOT NULL,
    member_digest bytea NOT NULL,
    requested_by text NOT NULL,
    requested_at timestamptz NOT NULL,
    status text NOT NULL CHECK (
        status IN ('ACTIVE', 'INACTIVE', 'NOT_FOUND', 'ERROR', 'PENDING')
    ),
    source text CHECK (source IN ('CACHE', 'PAYER')),
    completed_at timestamptz,
    responded_at timestamptz,
    error_kind text,
    exchange_id uuid REFERENCES exchanges (exchange_id),
    outcome bytea,
    CHECK ((status = 'PENDING') = (completed_at IS NULL)),
    CHECK ((status = 'PENDING') = (outcome IS NULL)),
    CHECK ((status = 'ERROR') = (error_kind IS NOT NULL))
);

-- The sweeper's look-up of checks a stopped process left unanswered.
CREATE INDEX checks_pending ON checks (requested_at) WHERE status = 'PENDING';
CREATE INDEX checks_by_patient ON checks (patient_id, requested_at DESC);
CREATE INDEX checks_by_appointment ON checks (appointment_id) WHERE appointment_id <> '';
CREATE INDEX checks_by_exchange ON checks (exchange_id) WHERE exchange_id IS NOT NULL;
