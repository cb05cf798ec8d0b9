"""Routing policies stored under a name, the served and shadow roles, and what shadowing stores:
the shadow policy's decision beside each served one, and its sampled answers.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE avengers.policies (
  name       text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
  policy     jsonb NOT NULL CHECK (jsonb_typeof(policy) = 'object'),
  note       text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE avengers.policies IS 'Routing policies stored under a name (`avengers policies create`): the served one and those shadowed or kept for later.';
COMMENT ON COLUMN avengers.policies.name IS 'The policy''s name (letters, digits, dot, dash, underscore).';
COMMENT ON COLUMN avengers.policies.policy IS 'The policy as routing.Policy.to_dict writes it (fields that differ from the defaults, and top_n); read into avengers.routing_policy by avengers.policy_from_json.';
COMMENT ON COLUMN avengers.policies.note IS 'What the operator wrote about it.';
COMMENT ON COLUMN avengers.policies.created_at IS 'When it was stored.';
COMMENT ON COLUMN avengers.policies.updated_at IS 'When it was last replaced.';

CREATE TABLE avengers.policy_roles (
  role        text PRIMARY KEY CHECK (role IN ('served', 'shadow')),
  name        text NOT NULL REFERENCES avengers.policies (name) ON UPDATE CASCADE,
  sample_share double precision NOT NULL DEFAULT 0 CHECK (sample_share >= 0 AND sample_share <= 1),
  max_spend_per_day double precision CHECK (max_spend_per_day >= 0 AND max_spend_per_day < 'Infinity'),
  previous    text REFERENCES avengers.policies (name) ON DELETE SET NULL,
  since       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE avengers.policy_roles IS 'Which stored policy is served and which is shadowed (at most one of each): switched by `avengers policies promote` and `avengers shadow start|stop`.';
COMMENT ON COLUMN avengers.policy_roles.role IS 'served: what clients and the gateway route with unless a call or key sets its own fields; shadow: what every decision is also computed under, off the response path.';
COMMENT ON COLUMN avengers.policy_roles.name IS 'The stored policy (avengers.policies.name).';
COMMENT ON COLUMN avengers.policy_roles.sample_share IS 'shadow: the share of disagreeing requests whose question is also asked of the shadow''s top model (0: none).';
COMMENT ON COLUMN avengers.policy_roles.max_spend_per_day IS 'shadow: the most those sampled answers may cost in a UTC day, at the models'' prices (NULL: no cap; an unpriced model costs nothing and is sampled within the share whatever the cap).';
COMMENT ON COLUMN avengers.policy_roles.previous IS 'served: the policy served before the last promotion (what `avengers policies promote --back` returns to).';
COMMENT ON COLUMN avengers.policy_roles.since IS 'When the role was given to this policy.';

CREATE TABLE avengers.shadow_decisions (
  route_id          uuid PRIMARY KEY,
  policy_name       text NOT NULL,
  at                timestamptz NOT NULL DEFAULT now(),
  clustering_id     integer,
  cluster           integer,
  served_model      text,
  served_top        text,
  model             text,
  models            text[] NOT NULL DEFAULT '{}',
  score             double precision,
  served_score      double precision,
  expected_cost     double precision,
  served_cost       double precision,
  served_propensity double precision,
  sample            boolean NOT NULL DEFAULT false
);
CREATE INDEX shadow_decisions_at_idx ON avengers.shadow_decisions (at);
COMMENT ON TABLE avengers.shadow_decisions IS 'The shadow policy''s decision for a served request, computed off the response path (avengers.shadow_decide), beside the served one by route id.';
COMMENT ON COLUMN avengers.shadow_decisions.route_id IS 'The served request (route_log.route_id; the row may be written before the route-log row).';
COMMENT ON COLUMN avengers.shadow_decisions.policy_name IS 'The shadow policy (avengers.policies.name) at the time.';
COMMENT ON COLUMN avengers.shadow_decisions.at IS 'When the shadow decision was computed.';
COMMENT ON COLUMN avengers.shadow_decisions.clustering_id IS 'The clustering version the shadow policy routed with.';
COMMENT ON COLUMN avengers.shadow_decisions.cluster IS 'The query''s nearest cluster in that clustering.';
COMMENT ON COLUMN avengers.shadow_decisions.served_model IS 'The model the served decision put first (after its exploration): the one asked.';
COMMENT ON COLUMN avengers.shadow_decisions.served_top IS 'The model the served policy ranked best (before exploration).';
COMMENT ON COLUMN avengers.shadow_decisions.model IS 'The shadow policy''s first model (exploration off: its greedy choice; NULL: no eligible model).';
COMMENT ON COLUMN avengers.shadow_decisions.models IS 'The shadow policy''s candidates, best first.';
COMMENT ON COLUMN avengers.shadow_decisions.score IS 'Expected quality of the shadow''s first model under the shadow policy (its routing score).';
COMMENT ON COLUMN avengers.shadow_decisions.served_score IS 'Expected quality of the served model under the served decision (its routing score).';
COMMENT ON COLUMN avengers.shadow_decisions.expected_cost IS 'Expected cost of the request on the shadow''s first model (NULL: unpriced and unmeasured).';
COMMENT ON COLUMN avengers.shadow_decisions.served_cost IS 'Expected cost of the request on the served model (NULL: unpriced and unmeasured).';
COMMENT ON COLUMN avengers.shadow_decisions.served_propensity IS 'Probability the served model had of going first under the served policy (route_log.propensity; NULL under thompson).';
COMMENT ON COLUMN avengers.shadow_decisions.sample IS 'Chosen for sampling: the two disagree and the request fell in the sample share (the answer lands in shadow_samples unless the day''s spend cap was reached).';

CREATE TABLE avengers.shadow_samples (
  route_id     uuid PRIMARY KEY REFERENCES avengers.shadow_decisions (route_id) ON DELETE CASCADE,
  at           timestamptz NOT NULL DEFAULT now(),
  model        text NOT NULL,
  answer       text,
  served_answer text,
  agrees       boolean,
  score        double precision CHECK (score >= 0 AND score <= 1),
  cost         double precision NOT NULL DEFAULT 0 CHECK (cost >= 0),
  reserved     double precision NOT NULL DEFAULT 0 CHECK (reserved >= 0),
  error        text
);
CREATE INDEX shadow_samples_at_idx ON avengers.shadow_samples (at);
COMMENT ON TABLE avengers.shadow_samples IS 'Answers of the shadow policy''s top model for a sampled share of the requests where it disagrees with the served one, asked off the response path within the daily spend cap.';
COMMENT ON COLUMN avengers.shadow_samples.route_id IS 'The served request (shadow_decisions.route_id).';
COMMENT ON COLUMN avengers.shadow_samples.at IS 'When the shadow model answered.';
COMMENT ON COLUMN avengers.shadow_samples.model IS 'The shadow''s top model that was asked.';
COMMENT ON COLUMN avengers.shadow_samples.answer IS 'Its extracted answer (NULL: none could be extracted, or it failed).';
COMMENT ON COLUMN avengers.shadow_samples.served_answer IS 'The served request''s voted answer it is compared with.';
COMMENT ON COLUMN avengers.shadow_samples.agrees IS 'Whether the two extracted answers agree (NULL: one is missing).';
COMMENT ON COLUMN avengers.shadow_samples.score IS 'A grader''s or replay''s score of the shadow answer in [0, 1] (NULL: not scored).';
COMMENT ON COLUMN avengers.shadow_samples.cost IS 'What the shadow answer cost (usage at the model''s prices; 0 when unpriced); until it answers, what was reserved.';
COMMENT ON COLUMN avengers.shadow_samples.reserved IS 'The most the answer could cost (every prompt byte a token, max_tokens out, at the model''s prices), reserved against the day''s cap before asking (avengers.shadow_reserve).';
COMMENT ON COLUMN avengers.shadow_samples.error IS 'Why the shadow model gave no answer (NULL: it answered).';
"""

DOWNGRADE = r"""
DROP TABLE avengers.shadow_samples;
DROP TABLE avengers.shadow_decisions;
DROP TABLE avengers.policy_roles;
DROP TABLE avengers.policies;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
