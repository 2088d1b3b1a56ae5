-- 1. A PENDING_VERIFICATION appointment whose re-check the payer answers INACTIVE or
-- NOT_FOUND stays PENDING_VERIFICATION for staff to resolve with the patient (the contract:
-- never cancelled automatically) and is not re-checked again, so its next_check_at is NULL.
-- 0001 required a next check for every PENDING_VERIFICATION row, which made recording that
-- final answer fail (and the re-check loop retry it forever): the rule now exempts it.
ALTER TABLE appointments DROP CONSTRAINT appointments_check2;
ALTER TABLE appointments ADD CONSTRAINT appointments_pending_has_next_check CHECK (
    status <> 'PENDING_VERIFICATION'
    OR next_check_at IS NOT NULL
    OR eligibility_status IN ('INACTIVE', 'NOT_FOUND')
);

-- 2. An appointment's reservations, live or released (what it shows once cancelled, and the
-- history a reschedule leaves): the partial index of 0001 covers only the live ones.
CREATE INDEX reservations_by_appointment ON reservations (appointment_id, released_at);
