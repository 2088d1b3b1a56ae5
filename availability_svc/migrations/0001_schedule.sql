-- The availability schema: what can be booked (organisations, locations, plans, providers,
-- rooms and equipment, visit types), the weekly templates with their exceptions and same-day
-- overrides, the slot inventory they materialize into, and the conflicts materialization finds.
--
-- Tenancy: every row carries organization_id, and every reference between rows goes through a
-- composite foreign key (organization_id, id), so a row can never point at another
-- organisation's row even if a caller supplies a foreign id. Parents therefore declare
-- UNIQUE (organization_id, id) beside their primary key.
--
-- Times: template windows, exception windows and override windows are local wall-clock
-- minutes of the day (0..1440, where 1440 is the end of the day, "24:00") in the location's
-- IANA zone; only materialization turns them into instants. Dates are local dates.
-- Days of the week are ISO (1 = Monday .. 7 = Sunday), as in medsched.common.v1.DayOfWeek and
-- extract(isodow ...).

CREATE TABLE organizations (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    display_name    text NOT NULL CHECK (btrim(display_name) <> ''),
    granule_minutes integer NOT NULL DEFAULT 15 CHECK (granule_minutes IN (5, 10, 15, 20, 30, 60)),
    horizon_days    integer NOT NULL DEFAULT 90 CHECK (horizon_days BETWEEN 1 AND 400),
    time_zone       text NOT NULL,
    active          boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE locations (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id     uuid NOT NULL REFERENCES organizations (id),
    display_name        text NOT NULL CHECK (btrim(display_name) <> ''),
    address_lines       text[] NOT NULL DEFAULT '{}',
    locality            text NOT NULL DEFAULT '',
    administrative_area text NOT NULL DEFAULT '',
    postal_code         text NOT NULL DEFAULT '',
    region_code         text NOT NULL DEFAULT '',
    latitude            double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude           double precision NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    time_zone           text NOT NULL,
    active              boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, id)
);

CREATE TABLE insurance_plans (
    organization_id uuid NOT NULL REFERENCES organizations (id),
    plan_id         text NOT NULL CHECK (plan_id ~ '^[a-z][a-z0-9_]{0,62}$'),
    display_name    text NOT NULL CHECK (btrim(display_name) <> ''),
    payer_id        text NOT NULL CHECK (btrim(payer_id) <> ''),
    active          boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, plan_id)
);

-- Specialties and languages are free codes with no table of their own, so they are arrays on
-- the provider (one row read per provider when the search index is built). Plans and
-- locations are rows of other tables, so they are join tables with real foreign keys.
CREATE TABLE providers (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id        uuid NOT NULL REFERENCES organizations (id),
    display_name           text NOT NULL CHECK (btrim(display_name) <> ''),
    npi                    text CHECK (npi ~ '^[0-9]{10}$'),
    specialties            text[] NOT NULL CHECK (cardinality(specialties) >= 1),
    languages              text[] NOT NULL DEFAULT '{}',
    accepting_new_patients boolean NOT NULL DEFAULT true,
    active                 boolean NOT NULL DEFAULT true,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, id),
    UNIQUE (organization_id, npi)
);

CREATE INDEX providers_specialties ON providers USING gin (specialties);

CREATE TABLE provider_locations (
    organization_id uuid NOT NULL,
    provider_id     uuid NOT NULL,
    location_id     uuid NOT NULL,
    PRIMARY KEY (provider_id, location_id),
    UNIQUE (organization_id, provider_id, location_id),
    FOREIGN KEY (organization_id, provider_id) REFERENCES providers (organization_id, id)
        ON DELETE CASCADE,
    FOREIGN KEY (organization_id, location_id) REFERENCES locations (organization_id, id)
);

CREATE INDEX provider_locations_location ON provider_locations (location_id);

CREATE TABLE provider_plans (
    organization_id uuid NOT NULL,
    provider_id     uuid NOT NULL,
    plan_id         text NOT NULL,
    PRIMARY KEY (provider_id, plan_id),
    FOREIGN KEY (organization_id, provider_id) REFERENCES providers (organization_id, id)
        ON DELETE CASCADE,
    FOREIGN KEY (organization_id, plan_id) REFERENCES insurance_plans (organization_id, plan_id)
);

CREATE INDEX provider_plans_plan ON provider_plans (organization_id, plan_id);

CREATE TABLE resources (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL,
    location_id     uuid NOT NULL,
    display_name    text NOT NULL CHECK (btrim(display_name) <> ''),
    category        text NOT NULL CHECK (category IN ('ROOM', 'EQUIPMENT')),
    kind            text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_]{0,62}$'),
    active          boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, id),
    FOREIGN KEY (organization_id, location_id) REFERENCES locations (organization_id, id)
);

CREATE INDEX resources_location_kind ON resources (location_id, kind);

CREATE TABLE visit_types (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id        uuid NOT NULL REFERENCES organizations (id),
    display_name           text NOT NULL CHECK (btrim(display_name) <> ''),
    specialty              text NOT NULL CHECK (btrim(specialty) <> ''),
    duration_granules      integer NOT NULL CHECK (duration_granules BETWEEN 1 AND 32),
    patient_kind           text NOT NULL DEFAULT 'ANY'
                               CHECK (patient_kind IN ('NEW', 'RETURNING', 'ANY')),
    minimum_notice_seconds bigint NOT NULL DEFAULT 0 CHECK (minimum_notice_seconds >= 0),
    -- 0: the organisation's horizon.
    maximum_days_ahead     integer NOT NULL DEFAULT 0 CHECK (maximum_days_ahead BETWEEN 0 AND 400),
    service_type_code      text NOT NULL DEFAULT '30' CHECK (btrim(service_type_code) <> ''),
    active                 boolean NOT NULL DEFAULT true,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, id)
);

-- Where a visit type may be booked; no rows: at every location of the provider.
CREATE TABLE visit_type_locations (
    organization_id uuid NOT NULL,
    visit_type_id   uuid NOT NULL,
    location_id     uuid NOT NULL,
    PRIMARY KEY (visit_type_id, location_id),
    FOREIGN KEY (organization_id, visit_type_id) REFERENCES visit_types (organization_id, id)
        ON DELETE CASCADE,
    FOREIGN KEY (organization_id, location_id) REFERENCES locations (organization_id, id)
);

CREATE TABLE visit_type_resource_needs (
    organization_id uuid NOT NULL,
    visit_type_id   uuid NOT NULL,
    kind            text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_]{0,62}$'),
    category        text NOT NULL CHECK (category IN ('ROOM', 'EQUIPMENT')),
    count           integer NOT NULL DEFAULT 1 CHECK (count BETWEEN 1 AND 16),
    PRIMARY KEY (visit_type_id, kind),
    FOREIGN KEY (organization_id, visit_type_id) REFERENCES visit_types (organization_id, id)
        ON DELETE CASCADE
);

-- A template names a provider *at one of their locations*: the foreign key to
-- provider_locations makes "templates may only name the provider's locations" a constraint.
CREATE TABLE schedule_templates (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id      uuid NOT NULL,
    provider_id          uuid NOT NULL,
    location_id          uuid NOT NULL,
    effective_start_date date NOT NULL,
    effective_end_date   date CHECK (effective_end_date >= effective_start_date),
    week_interval        integer NOT NULL DEFAULT 1 CHECK (week_interval BETWEEN 1 AND 52),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, id),
    FOREIGN KEY (organization_id, provider_id, location_id)
        REFERENCES provider_locations (organization_id, provider_id, location_id)
);

CREATE INDEX schedule_templates_provider ON schedule_templates (provider_id, effective_start_date);
CREATE INDEX schedule_templates_location ON schedule_templates (location_id);

CREATE TABLE template_windows (
    organization_id uuid NOT NULL,
    template_id     uuid NOT NULL,
    window_index    integer NOT NULL CHECK (window_index >= 0),
    day_of_week     smallint NOT NULL CHECK (day_of_week BETWEEN 1 AND 7),
    start_minute    integer NOT NULL CHECK (start_minute BETWEEN 0 AND 1439),
    end_minute      integer NOT NULL CHECK (end_minute BETWEEN 1 AND 1440),
    PRIMARY KEY (template_id, window_index),
    UNIQUE (organization_id, template_id, window_index),
    CHECK (start_minute < end_minute),
    FOREIGN KEY (organization_id, template_id) REFERENCES schedule_templates (organization_id, id)
        ON DELETE CASCADE
);

-- Visit types a template offers in windows that name none.
CREATE TABLE template_visit_types (
    organization_id uuid NOT NULL,
    template_id     uuid NOT NULL,
    visit_type_id   uuid NOT NULL,
    PRIMARY KEY (template_id, visit_type_id),
    FOREIGN KEY (organization_id, template_id) REFERENCES schedule_templates (organization_id, id)
        ON DELETE CASCADE,
    FOREIGN KEY (organization_id, visit_type_id) REFERENCES visit_types (organization_id, id)
);

-- Visit types one window offers instead of the template's.
CREATE TABLE template_window_visit_types (
    organization_id uuid NOT NULL,
    template_id     uuid NOT NULL,
    window_index    integer NOT NULL,
    visit_type_id   uuid NOT NULL,
    PRIMARY KEY (template_id, window_index, visit_type_id),
    FOREIGN KEY (organization_id, template_id, window_index)
        REFERENCES template_windows (organization_id, template_id, window_index)
        ON DELETE CASCADE,
    FOREIGN KEY (organization_id, visit_type_id) REFERENCES visit_types (organization_id, id)
);

-- Whole days (no window) or the same local window on every date of the span.
CREATE TABLE schedule_exceptions (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL,
    provider_id     uuid NOT NULL,
    -- NULL: at every location of the provider.
    location_id     uuid,
    kind            text NOT NULL CHECK (kind IN ('PTO', 'CONFERENCE', 'ADMIN_BLOCK', 'OTHER')),
    start_date      date NOT NULL,
    end_date        date NOT NULL,
    start_minute    integer CHECK (start_minute BETWEEN 0 AND 1439),
    end_minute      integer CHECK (end_minute BETWEEN 1 AND 1440),
    description     text NOT NULL DEFAULT '' CHECK (char_length(description) <= 500),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, id),
    CHECK (end_date >= start_date),
    CHECK ((start_minute IS NULL) = (end_minute IS NULL)),
    CHECK (start_minute IS NULL OR start_minute < end_minute),
    FOREIGN KEY (organization_id, provider_id) REFERENCES providers (organization_id, id),
    FOREIGN KEY (organization_id, provider_id, location_id)
        REFERENCES provider_locations (organization_id, provider_id, location_id)
);

CREATE INDEX schedule_exceptions_provider ON schedule_exceptions (provider_id, start_date);

CREATE TABLE schedule_overrides (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL,
    provider_id     uuid NOT NULL,
    location_id     uuid NOT NULL,
    day             date NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('LEAVE_EARLY', 'ARRIVE_LATE', 'ADD_HOURS')),
    -- The effective window: LEAVE_EARLY [start, 1440), ARRIVE_LATE [0, end), ADD_HOURS as given.
    start_minute    integer NOT NULL CHECK (start_minute BETWEEN 0 AND 1439),
    end_minute      integer NOT NULL CHECK (end_minute BETWEEN 1 AND 1440),
    description     text NOT NULL DEFAULT '' CHECK (char_length(description) <= 500),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, id),
    CHECK (start_minute < end_minute),
    FOREIGN KEY (organization_id, provider_id, location_id)
        REFERENCES provider_locations (organization_id, provider_id, location_id)
);

CREATE INDEX schedule_overrides_provider ON schedule_overrides (provider_id, day);

CREATE TABLE override_visit_types (
    organization_id uuid NOT NULL,
    override_id     uuid NOT NULL,
    visit_type_id   uuid NOT NULL,
    PRIMARY KEY (override_id, visit_type_id),
    FOREIGN KEY (organization_id, override_id) REFERENCES schedule_overrides (organization_id, id)
        ON DELETE CASCADE,
    FOREIGN KEY (organization_id, visit_type_id) REFERENCES visit_types (organization_id, id)
);

-- The visit types each provider offers at each location: the union over their templates (the
-- template's and its windows' lists) and ADD_HOURS overrides that have not ended. The search
-- index filters visit types at this granularity (see materialize.offered_visit_types).
CREATE VIEW provider_location_visit_types AS
SELECT t.organization_id, t.provider_id, t.location_id, tv.visit_type_id
FROM schedule_templates t
JOIN template_visit_types tv ON tv.template_id = t.id
WHERE t.effective_end_date IS NULL OR t.effective_end_date >= current_date
UNION
SELECT t.organization_id, t.provider_id, t.location_id, wv.visit_type_id
FROM schedule_templates t
JOIN template_window_visit_types wv ON wv.template_id = t.id
WHERE t.effective_end_date IS NULL OR t.effective_end_date >= current_date
UNION
SELECT o.organization_id, o.provider_id, o.location_id, ov.visit_type_id
FROM schedule_overrides o
JOIN override_visit_types ov ON ov.override_id = o.id
WHERE o.day >= current_date;

-- The slot inventory, shape fixed by the availability contract and shared with booking_svc.
-- availability_svc inserts OPEN granules and moves OPEN <-> BLOCKED; booking_svc moves
-- OPEN -> HELD/BOOKED and back. No foreign keys here on purpose: the whole horizon is
-- 10.8 million rows written with COPY, and per-row foreign-key triggers would multiply that
-- cost; the materializer only ever writes granules of providers and locations it just read.
CREATE TABLE slots (
    provider_id     uuid        NOT NULL,
    start_time      timestamptz NOT NULL,
    end_time        timestamptz NOT NULL,
    location_id     uuid        NOT NULL,
    organization_id uuid        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('OPEN', 'BLOCKED', 'HELD', 'BOOKED')),
    version         bigint      NOT NULL DEFAULT 1,
    appointment_id  uuid,
    hold_id         uuid,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider_id, start_time),
    CHECK (end_time > start_time)
);

CREATE INDEX slots_open ON slots (provider_id, start_time)
    INCLUDE (location_id) WHERE status = 'OPEN';

CREATE TABLE resource_busy (
    resource_id    uuid NOT NULL,
    appointment_id uuid NOT NULL,
    during         tstzrange NOT NULL,
    PRIMARY KEY (resource_id, appointment_id)
);

CREATE INDEX resource_busy_during ON resource_busy USING gist (resource_id, during);

-- A booked (or held) visit that a schedule change no longer fits. One OPEN conflict per
-- provider and visit start: materialization re-finding the same visit is not a new conflict.
CREATE TABLE schedule_conflicts (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL,
    provider_id     uuid NOT NULL,
    location_id     uuid NOT NULL,
    appointment_id  uuid,
    hold_id         uuid,
    start_time      timestamptz NOT NULL,
    end_time        timestamptz NOT NULL,
    cause           text NOT NULL CHECK (cause IN ('EXCEPTION', 'OVERRIDE', 'TEMPLATE_CHANGE')),
    cause_id        uuid,
    state           text NOT NULL DEFAULT 'OPEN' CHECK (state IN ('OPEN', 'RESOLVED')),
    detected_at     timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    UNIQUE (organization_id, id),
    CHECK (end_time > start_time),
    CHECK ((state = 'RESOLVED') = (resolved_at IS NOT NULL)),
    FOREIGN KEY (organization_id, provider_id) REFERENCES providers (organization_id, id)
);

CREATE UNIQUE INDEX schedule_conflicts_open ON schedule_conflicts (provider_id, start_time)
    WHERE state = 'OPEN';
CREATE INDEX schedule_conflicts_org ON schedule_conflicts (organization_id, state, start_time);
CREATE INDEX schedule_conflicts_cause ON schedule_conflicts (cause_id);

-- How far each provider's granules are materialized (local date, inclusive); the daily
-- roll-forward extends every provider from here to the horizon.
CREATE TABLE materialization_state (
    provider_id          uuid PRIMARY KEY,
    organization_id      uuid NOT NULL,
    materialized_through date NOT NULL,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (organization_id, provider_id) REFERENCES providers (organization_id, id)
        ON DELETE CASCADE
);
