-- Lookups booking_svc makes on the shared slot inventory: the granules of one hold (release,
-- expiry) and of one appointment (cancel, reschedule). Both sets are small next to the
-- 10.8 million rows, so partial indexes keep them cheap to maintain.
CREATE INDEX slots_hold ON slots (hold_id) WHERE status = 'HELD';
CREATE INDEX slots_appointment ON slots (appointment_id) WHERE status = 'BOOKED';
