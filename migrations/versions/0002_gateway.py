"""The gateway: API keys (hashes only), conversation affinity, and the route id callers get.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-14
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE avengers.api_keys (
  id           integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name         text NOT NULL CHECK (length(btrim(name)) > 0),
  key_hash     text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
  prefix       text NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  last_used_at timestamptz,
  revoked_at   timestamptz
);
CREATE UNIQUE INDEX api_keys_live_name_idx ON avengers.api_keys (name) WHERE revoked_at IS NULL;
COMMENT ON TABLE avengers.api_keys IS 'Keys of the gateway (avengers serve). Only a hash of each key is kept; the key is shown once, when created (avengers keys create).';
COMMENT ON COLUMN avengers.api_keys.id IS 'Surrogate key.';
COMMENT ON COLUMN avengers.api_keys.name IS 'Who or what the key is for; unique among keys not revoked.';
COMMENT ON COLUMN avengers.api_keys.key_hash IS 'sha256 of the key, hex. The key itself is never stored.';
COMMENT ON COLUMN avengers.api_keys.prefix IS 'The first characters of the key, to tell keys apart in listings (not enough to use it).';
COMMENT ON COLUMN avengers.api_keys.created_at IS 'When the key was created.';
COMMENT ON COLUMN avengers.api_keys.last_used_at IS 'When a request last presented the key (updated at most once a minute).';
COMMENT ON COLUMN avengers.api_keys.revoked_at IS 'When the key was revoked; a revoked key is refused (401). NULL: live.';

CREATE TABLE avengers.gateway_sessions (
  session_hash  text PRIMARY KEY CHECK (session_hash ~ '^[0-9a-f]{64}$'),
  model_id      integer NOT NULL REFERENCES avengers.models (id) ON DELETE CASCADE,
  clustering_id integer REFERENCES avengers.clusterings (id) ON DELETE SET NULL,
  cluster       integer,
  created_at    timestamptz NOT NULL DEFAULT now(),
  last_seen_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gateway_sessions_last_seen_idx ON avengers.gateway_sessions (last_seen_at);
COMMENT ON TABLE avengers.gateway_sessions IS 'Conversation affinity: the model that answered the first turn of a conversation, so later turns go to it first.';
COMMENT ON COLUMN avengers.gateway_sessions.session_hash IS 'sha256 of the caller''s session id (x-session-id header or the user field); the id itself is not stored.';
COMMENT ON COLUMN avengers.gateway_sessions.model_id IS 'The model the conversation stays on.';
COMMENT ON COLUMN avengers.gateway_sessions.clustering_id IS 'Clustering version that routed the first turn.';
COMMENT ON COLUMN avengers.gateway_sessions.cluster IS 'Cluster of the first turn.';
COMMENT ON COLUMN avengers.gateway_sessions.created_at IS 'When the first turn was answered.';
COMMENT ON COLUMN avengers.gateway_sessions.last_seen_at IS 'When a turn of the conversation was last answered; older than the gateway''s session TTL: routed afresh.';

ALTER TABLE avengers.route_log
  ADD COLUMN route_id uuid,
  ADD COLUMN api_key_id integer REFERENCES avengers.api_keys (id) ON DELETE SET NULL;
CREATE UNIQUE INDEX route_log_route_id_idx ON avengers.route_log (route_id);
COMMENT ON COLUMN avengers.route_log.route_id IS 'Id the caller got for the request (header x-avengers-route-id; Answer.route_id in Python).';
COMMENT ON COLUMN avengers.route_log.api_key_id IS 'Gateway key the request came with (NULL: library call or a gateway without auth).';
COMMENT ON COLUMN avengers.route_log.strategy IS 'self-consistency, model-switch or direct; from the gateway also passthrough (a request that named a pool model) and route (a decision only, POST /v1/route).';
"""

DOWNGRADE = r"""
ALTER TABLE avengers.route_log DROP COLUMN api_key_id, DROP COLUMN route_id;
COMMENT ON COLUMN avengers.route_log.strategy IS 'self-consistency, model-switch or direct.';
DROP TABLE avengers.gateway_sessions;
DROP TABLE avengers.api_keys;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
