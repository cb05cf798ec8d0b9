"""Keys with policies: a spend limit per day and per month, the models a key may use, a samples
ceiling, requests per minute and default routing options; what each request cost
(route_log.cost) and what each key spent per day (api_key_usage), so the gateway can refuse a
key past its limits before calling a model.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-20
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE avengers.api_keys
  ADD COLUMN spend_limit_day double precision CHECK (spend_limit_day >= 0),
  ADD COLUMN spend_limit_month double precision CHECK (spend_limit_month >= 0),
  ADD COLUMN models text[] CHECK (cardinality(models) > 0),
  ADD COLUMN max_samples integer CHECK (max_samples >= 1),
  ADD COLUMN requests_per_minute integer CHECK (requests_per_minute >= 1),
  ADD COLUMN routing jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(routing) = 'object');
COMMENT ON COLUMN avengers.api_keys.spend_limit_day IS 'Most the key may spend per UTC day, in the models'' price currency (route_log.cost); past it requests get 429 insufficient_quota until the day ends. NULL: no limit.';
COMMENT ON COLUMN avengers.api_keys.spend_limit_month IS 'Most the key may spend per UTC calendar month; past it requests get 429 insufficient_quota until the month ends. NULL: no limit.';
COMMENT ON COLUMN avengers.api_keys.models IS 'Pool models the key may use, by name or through routing (model "avengers" routes among them only). NULL: every model.';
COMMENT ON COLUMN avengers.api_keys.max_samples IS 'Most samples one request of the key may draw per model; more is refused (400). NULL: the gateway''s limit.';
COMMENT ON COLUMN avengers.api_keys.requests_per_minute IS 'Requests the key may make per minute (a fixed window per UTC minute); more get 429 rate_limit_exceeded. NULL: no limit.';
COMMENT ON COLUMN avengers.api_keys.routing IS 'Default routing options of the key''s requests (fields of the gateway''s routing policy: method, tradeoff, max_cost, ood_policy, ...); a request''s own fields override them, and they override the gateway''s.';

ALTER TABLE avengers.route_log ADD COLUMN cost double precision CHECK (cost >= 0);
COMMENT ON COLUMN avengers.route_log.cost IS 'What the request cost: each model''s tokens (metadata usage) at its prices per 1M tokens when the row was written. NULL: no model it used has a price.';
CREATE INDEX route_log_api_key_idx ON avengers.route_log (api_key_id, at) WHERE api_key_id IS NOT NULL;

CREATE TABLE avengers.api_key_usage (
  api_key_id integer NOT NULL REFERENCES avengers.api_keys (id) ON DELETE CASCADE,
  day        date NOT NULL,
  requests   bigint NOT NULL DEFAULT 0 CHECK (requests >= 0),
  tokens_in  bigint NOT NULL DEFAULT 0 CHECK (tokens_in >= 0),
  tokens_out bigint NOT NULL DEFAULT 0 CHECK (tokens_out >= 0),
  cost       double precision NOT NULL DEFAULT 0 CHECK (cost >= 0),
  PRIMARY KEY (api_key_id, day)
);
COMMENT ON TABLE avengers.api_key_usage IS 'What each key''s logged requests used and cost per UTC day, added as their route-log rows are written (avengers.log_routes), so a key''s spend is read without scanning the route log. avengers.key_spend sums it per day and month.';
COMMENT ON COLUMN avengers.api_key_usage.api_key_id IS 'The key.';
COMMENT ON COLUMN avengers.api_key_usage.day IS 'UTC day of the requests (route_log.at).';
COMMENT ON COLUMN avengers.api_key_usage.requests IS 'Route-log rows of the key that day.';
COMMENT ON COLUMN avengers.api_key_usage.tokens_in IS 'Prompt tokens of every sample drawn.';
COMMENT ON COLUMN avengers.api_key_usage.tokens_out IS 'Completion tokens of every sample drawn.';
COMMENT ON COLUMN avengers.api_key_usage.cost IS 'Sum of route_log.cost (unpriced models count 0).';

CREATE TABLE avengers.api_key_minutes (
  api_key_id integer NOT NULL REFERENCES avengers.api_keys (id) ON DELETE CASCADE,
  minute     timestamptz NOT NULL,
  requests   integer NOT NULL CHECK (requests >= 0),
  PRIMARY KEY (api_key_id, minute)
);
COMMENT ON TABLE avengers.api_key_minutes IS 'Requests admitted per key and minute, for requests_per_minute (avengers.admit_key); minutes before the last are removed as the key is used.';
COMMENT ON COLUMN avengers.api_key_minutes.api_key_id IS 'The key.';
COMMENT ON COLUMN avengers.api_key_minutes.minute IS 'The UTC minute the requests arrived in.';
COMMENT ON COLUMN avengers.api_key_minutes.requests IS 'Requests admitted in that minute.';
"""

DOWNGRADE = r"""
DROP TABLE avengers.api_key_minutes;
DROP TABLE avengers.api_key_usage;
DROP INDEX avengers.route_log_api_key_idx;
ALTER TABLE avengers.route_log DROP COLUMN cost;
ALTER TABLE avengers.api_keys
  DROP COLUMN routing, DROP COLUMN requests_per_minute, DROP COLUMN max_samples,
  DROP COLUMN models, DROP COLUMN spend_limit_month, DROP COLUMN spend_limit_day;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
