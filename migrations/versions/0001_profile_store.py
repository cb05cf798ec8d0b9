"""The profile store: models, datasets, queries, embeddings, clusterings, outcomes, route log.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE EXTENSION IF NOT EXISTS vector;
CREATE SCHEMA IF NOT EXISTS avengers;
COMMENT ON SCHEMA avengers IS
  'avengers-store: capability profiles of a model pool over clusters of query embeddings (the Avengers routing recipe).';

CREATE TABLE avengers.meta (
  key   text PRIMARY KEY,
  value text NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE avengers.meta IS 'Store-level facts kept by the library (e.g. the hash of the applied sql/ definitions).';
COMMENT ON COLUMN avengers.meta.key IS 'Name of the fact.';
COMMENT ON COLUMN avengers.meta.value IS 'Its value, as text.';
COMMENT ON COLUMN avengers.meta.updated_at IS 'When it was last written.';

CREATE TABLE avengers.models (
  id             integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name           text NOT NULL UNIQUE CHECK (length(btrim(name)) > 0),
  endpoint       text,
  served_name    text,
  api_key_env    text,
  cost_in_per_m  double precision CHECK (cost_in_per_m >= 0),
  cost_out_per_m double precision CHECK (cost_out_per_m >= 0),
  active         boolean NOT NULL DEFAULT true,
  added_at       timestamptz NOT NULL DEFAULT now(),
  metadata       jsonb NOT NULL DEFAULT '{}'::jsonb
);
COMMENT ON TABLE avengers.models IS 'The model pool. Each model is an OpenAI-compatible endpoint (vLLM); only active models are routed to.';
COMMENT ON COLUMN avengers.models.id IS 'Surrogate key.';
COMMENT ON COLUMN avengers.models.name IS 'Unique name used in outcomes, profiles and the CLI.';
COMMENT ON COLUMN avengers.models.endpoint IS 'Base URL of the OpenAI-compatible API, e.g. http://vllm-qwen:8000/v1 (a load balancer in front of replicas is fine). NULL: outcomes only, not callable.';
COMMENT ON COLUMN avengers.models.served_name IS 'Model name to send in API requests (vLLM --served-model-name); defaults to name.';
COMMENT ON COLUMN avengers.models.api_key_env IS 'Name of the environment variable holding the API key, if the endpoint needs one. The key itself is never stored.';
COMMENT ON COLUMN avengers.models.cost_in_per_m IS 'Price per 1M input tokens, in the operator''s currency.';
COMMENT ON COLUMN avengers.models.cost_out_per_m IS 'Price per 1M output tokens.';
COMMENT ON COLUMN avengers.models.active IS 'Routing uses active models only (see avengers models select --apply).';
COMMENT ON COLUMN avengers.models.added_at IS 'When the model joined the pool.';
COMMENT ON COLUMN avengers.models.metadata IS 'Free-form facts about the model.';

CREATE TABLE avengers.datasets (
  id                   integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name                 text NOT NULL UNIQUE CHECK (length(btrim(name)) > 0),
  category             text,
  is_ood               boolean NOT NULL DEFAULT false,
  split_seed           integer,
  calibration_fraction double precision CHECK (calibration_fraction > 0 AND calibration_fraction < 1),
  source               text,
  added_at             timestamptz NOT NULL DEFAULT now(),
  metadata             jsonb NOT NULL DEFAULT '{}'::jsonb
);
COMMENT ON TABLE avengers.datasets IS 'Benchmarks or query collections. Out-of-distribution datasets are routed but never clustered.';
COMMENT ON COLUMN avengers.datasets.id IS 'Surrogate key.';
COMMENT ON COLUMN avengers.datasets.name IS 'Unique dataset name.';
COMMENT ON COLUMN avengers.datasets.category IS 'Free-form grouping, e.g. math, code, knowledge.';
COMMENT ON COLUMN avengers.datasets.is_ood IS 'True: never used to fit clusters or profiles; evaluated as unseen data.';
COMMENT ON COLUMN avengers.datasets.split_seed IS 'Seed of the calibration/test split when the store drew it; NULL when the split came from the file.';
COMMENT ON COLUMN avengers.datasets.calibration_fraction IS 'Fraction drawn for calibration when the store drew the split.';
COMMENT ON COLUMN avengers.datasets.source IS 'Where the rows came from (file path or URL).';
COMMENT ON COLUMN avengers.datasets.added_at IS 'When the dataset was first loaded.';
COMMENT ON COLUMN avengers.datasets.metadata IS 'Free-form facts (license, attribution, loader options).';

CREATE TABLE avengers.queries (
  id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  dataset_id       integer NOT NULL REFERENCES avengers.datasets (id) ON DELETE CASCADE,
  external_id      text,
  text             text NOT NULL CHECK (length(btrim(text)) > 0),
  reference_answer text,
  task_type        text NOT NULL DEFAULT 'text' CHECK (task_type IN ('math', 'multiple_choice', 'code', 'text')),
  split            text NOT NULL CHECK (split IN ('calibration', 'test')),
  content_hash     text NOT NULL CHECK (content_hash ~ '^[0-9a-f]{64}$'),
  metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
  added_at         timestamptz NOT NULL DEFAULT now(),
  UNIQUE (dataset_id, content_hash)
);
CREATE INDEX queries_dataset_split_idx ON avengers.queries (dataset_id, split);
CREATE INDEX queries_dataset_external_id_idx ON avengers.queries (dataset_id, external_id);
COMMENT ON TABLE avengers.queries IS 'Calibration and test queries. Identical texts within a dataset are one row (content_hash).';
COMMENT ON COLUMN avengers.queries.id IS 'Surrogate key.';
COMMENT ON COLUMN avengers.queries.dataset_id IS 'Dataset the query belongs to.';
COMMENT ON COLUMN avengers.queries.external_id IS 'Id in the source file (first one seen when duplicates were merged).';
COMMENT ON COLUMN avengers.queries.text IS 'The query as sent to a model.';
COMMENT ON COLUMN avengers.queries.reference_answer IS 'Gold answer used to grade model outputs, when known.';
COMMENT ON COLUMN avengers.queries.task_type IS 'math, multiple_choice, code or text: selects the prompt, answer extractor and grader.';
COMMENT ON COLUMN avengers.queries.split IS 'calibration (fits clusters and profiles) or test (held out for evaluation).';
COMMENT ON COLUMN avengers.queries.content_hash IS 'sha256 of the normalised text; unique per dataset so duplicates merge.';
COMMENT ON COLUMN avengers.queries.metadata IS 'Free-form per-query facts (source columns, merged ids).';
COMMENT ON COLUMN avengers.queries.added_at IS 'When the query was loaded.';

CREATE TABLE avengers.embedding_spaces (
  id         integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  embedder   text NOT NULL UNIQUE,
  dimension  integer NOT NULL CHECK (dimension > 0 AND dimension <= 16000),
  active     boolean NOT NULL DEFAULT false,
  params     jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX embedding_spaces_one_active_idx ON avengers.embedding_spaces ((true)) WHERE active;
COMMENT ON TABLE avengers.embedding_spaces IS 'One row per embedder. Vectors of different spaces never mix; exactly one space is active.';
COMMENT ON COLUMN avengers.embedding_spaces.id IS 'Surrogate key.';
COMMENT ON COLUMN avengers.embedding_spaces.embedder IS 'Embedder name, e.g. all-MiniLM-L6-v2 or openai:http://host/v1#model.';
COMMENT ON COLUMN avengers.embedding_spaces.dimension IS 'Vector dimension of the space.';
COMMENT ON COLUMN avengers.embedding_spaces.active IS 'The space used for clustering and routing.';
COMMENT ON COLUMN avengers.embedding_spaces.params IS 'Embedder settings (max sequence length, normalisation).';
COMMENT ON COLUMN avengers.embedding_spaces.created_at IS 'When the space was created.';

CREATE TABLE avengers.query_embeddings (
  space_id   integer NOT NULL REFERENCES avengers.embedding_spaces (id) ON DELETE CASCADE,
  query_id   bigint NOT NULL REFERENCES avengers.queries (id) ON DELETE CASCADE,
  embedding  vector NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (space_id, query_id)
);
CREATE INDEX query_embeddings_query_idx ON avengers.query_embeddings (query_id);
COMMENT ON TABLE avengers.query_embeddings IS 'L2-normalised query embeddings, one per query and embedding space.';
COMMENT ON COLUMN avengers.query_embeddings.space_id IS 'Embedding space of the vector.';
COMMENT ON COLUMN avengers.query_embeddings.query_id IS 'The embedded query.';
COMMENT ON COLUMN avengers.query_embeddings.embedding IS 'Unit-norm vector (pgvector).';
COMMENT ON COLUMN avengers.query_embeddings.created_at IS 'When the vector was stored.';

CREATE TABLE avengers.clusterings (
  id         integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  space_id   integer NOT NULL REFERENCES avengers.embedding_spaces (id) ON DELETE CASCADE,
  algorithm  text NOT NULL,
  k          integer NOT NULL CHECK (k >= 1),
  seed       integer,
  params     jsonb NOT NULL DEFAULT '{}'::jsonb,
  status     text NOT NULL DEFAULT 'building' CHECK (status IN ('building', 'ready', 'active', 'failed')),
  n_queries  integer CHECK (n_queries >= 0),
  inertia    double precision,
  created_at timestamptz NOT NULL DEFAULT now(),
  activated_at timestamptz
);
CREATE UNIQUE INDEX clusterings_one_active_idx ON avengers.clusterings ((true)) WHERE status = 'active';
COMMENT ON TABLE avengers.clusterings IS 'Versioned clusterings of the calibration embeddings. At most one is active (served); switch with CALL avengers.activate_clustering(id).';
COMMENT ON COLUMN avengers.clusterings.id IS 'Version number of the clustering.';
COMMENT ON COLUMN avengers.clusterings.space_id IS 'Embedding space that was clustered.';
COMMENT ON COLUMN avengers.clusterings.algorithm IS 'kmeans, minibatch-kmeans, ward, gmm, spectral or birch.';
COMMENT ON COLUMN avengers.clusterings.k IS 'Number of clusters.';
COMMENT ON COLUMN avengers.clusterings.seed IS 'Random seed of the fit.';
COMMENT ON COLUMN avengers.clusterings.params IS 'Other fit parameters (datasets included, n_init, batch size).';
COMMENT ON COLUMN avengers.clusterings.status IS 'building (being written), ready (complete, not served), active (served), failed.';
COMMENT ON COLUMN avengers.clusterings.n_queries IS 'Number of calibration queries clustered.';
COMMENT ON COLUMN avengers.clusterings.inertia IS 'Sum of squared distances of queries to their centroid.';
COMMENT ON COLUMN avengers.clusterings.created_at IS 'When the fit started.';
COMMENT ON COLUMN avengers.clusterings.activated_at IS 'When this version was last made active.';

CREATE TABLE avengers.centroids (
  clustering_id integer NOT NULL REFERENCES avengers.clusterings (id) ON DELETE CASCADE,
  cluster       integer NOT NULL CHECK (cluster >= 0),
  centroid      vector NOT NULL,
  size          integer NOT NULL CHECK (size >= 0),
  PRIMARY KEY (clustering_id, cluster)
);
COMMENT ON TABLE avengers.centroids IS 'Cluster centres. Routing assigns a query to the centroid at the smallest Euclidean distance (<->), the rule K-means used.';
COMMENT ON COLUMN avengers.centroids.clustering_id IS 'Clustering version.';
COMMENT ON COLUMN avengers.centroids.cluster IS 'Cluster index, 0..k-1.';
COMMENT ON COLUMN avengers.centroids.centroid IS 'Mean of the member embeddings (not renormalised).';
COMMENT ON COLUMN avengers.centroids.size IS 'Number of calibration queries in the cluster.';

CREATE TABLE avengers.assignments (
  clustering_id integer NOT NULL,
  query_id      bigint NOT NULL REFERENCES avengers.queries (id) ON DELETE CASCADE,
  cluster       integer NOT NULL,
  distance      real CHECK (distance >= 0),
  PRIMARY KEY (clustering_id, query_id),
  FOREIGN KEY (clustering_id, cluster) REFERENCES avengers.centroids (clustering_id, cluster) ON DELETE CASCADE
);
CREATE INDEX assignments_cluster_idx ON avengers.assignments (clustering_id, cluster);
CREATE INDEX assignments_query_idx ON avengers.assignments (query_id);
COMMENT ON TABLE avengers.assignments IS 'Which cluster each clustered calibration query belongs to, per clustering version.';
COMMENT ON COLUMN avengers.assignments.clustering_id IS 'Clustering version.';
COMMENT ON COLUMN avengers.assignments.query_id IS 'The calibration query.';
COMMENT ON COLUMN avengers.assignments.cluster IS 'Its cluster index.';
COMMENT ON COLUMN avengers.assignments.distance IS 'Euclidean distance to the centroid.';

CREATE TABLE avengers.outcomes (
  query_id    bigint NOT NULL REFERENCES avengers.queries (id) ON DELETE CASCADE,
  model_id    integer NOT NULL REFERENCES avengers.models (id) ON DELETE CASCADE,
  score       double precision NOT NULL CHECK (score >= 0 AND score <= 1),
  samples     integer NOT NULL DEFAULT 1 CHECK (samples >= 1),
  answer      text,
  tokens_in   integer CHECK (tokens_in >= 0),
  tokens_out  integer CHECK (tokens_out >= 0),
  cost        double precision CHECK (cost >= 0),
  latency_ms  double precision CHECK (latency_ms >= 0),
  source      text,
  recorded_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (query_id, model_id)
);
CREATE INDEX outcomes_model_idx ON avengers.outcomes (model_id);
COMMENT ON TABLE avengers.outcomes IS 'Per-query results of each model: one row per query and model (re-imports upsert). Missing row = not evaluated, never 0.';
COMMENT ON COLUMN avengers.outcomes.query_id IS 'The query.';
COMMENT ON COLUMN avengers.outcomes.model_id IS 'The model.';
COMMENT ON COLUMN avengers.outcomes.score IS 'Outcome in [0,1]: 1/0 correctness, or the fraction of samples correct.';
COMMENT ON COLUMN avengers.outcomes.samples IS 'Number of samples the score averages.';
COMMENT ON COLUMN avengers.outcomes.answer IS 'An answer the model gave (optional).';
COMMENT ON COLUMN avengers.outcomes.tokens_in IS 'Prompt tokens used.';
COMMENT ON COLUMN avengers.outcomes.tokens_out IS 'Completion tokens used.';
COMMENT ON COLUMN avengers.outcomes.cost IS 'Cost of producing the outcome.';
COMMENT ON COLUMN avengers.outcomes.latency_ms IS 'Wall time of producing the outcome.';
COMMENT ON COLUMN avengers.outcomes.source IS 'Where the outcome came from: an import file, or evaluate:<model>.';
COMMENT ON COLUMN avengers.outcomes.recorded_at IS 'When the outcome was (last) written.';

CREATE TABLE avengers.route_log (
  id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at            timestamptz NOT NULL DEFAULT now(),
  query_hash    text NOT NULL,
  clustering_id integer REFERENCES avengers.clusterings (id) ON DELETE SET NULL,
  cluster       integer,
  distance      double precision,
  models        text[] NOT NULL DEFAULT '{}',
  strategy      text NOT NULL,
  final_answer  text,
  vote_share    double precision CHECK (vote_share >= 0 AND vote_share <= 1),
  samples       integer CHECK (samples >= 0),
  latency_ms    double precision CHECK (latency_ms >= 0),
  metadata      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX route_log_at_idx ON avengers.route_log (at);
CREATE INDEX route_log_clustering_idx ON avengers.route_log (clustering_id, cluster);
COMMENT ON TABLE avengers.route_log IS 'One row per answered request: the routing decision and the vote, for analysts and feedback.';
COMMENT ON COLUMN avengers.route_log.id IS 'Surrogate key.';
COMMENT ON COLUMN avengers.route_log.at IS 'When the request was answered.';
COMMENT ON COLUMN avengers.route_log.query_hash IS 'sha256 of the normalised query text (the text itself is not logged).';
COMMENT ON COLUMN avengers.route_log.clustering_id IS 'Clustering version that routed the request.';
COMMENT ON COLUMN avengers.route_log.cluster IS 'Nearest cluster.';
COMMENT ON COLUMN avengers.route_log.distance IS 'Euclidean distance to its centroid.';
COMMENT ON COLUMN avengers.route_log.models IS 'Models actually sampled, in order.';
COMMENT ON COLUMN avengers.route_log.strategy IS 'self-consistency, model-switch or direct.';
COMMENT ON COLUMN avengers.route_log.final_answer IS 'The voted answer.';
COMMENT ON COLUMN avengers.route_log.vote_share IS 'Share of valid votes the final answer received.';
COMMENT ON COLUMN avengers.route_log.samples IS 'Number of samples drawn.';
COMMENT ON COLUMN avengers.route_log.latency_ms IS 'End-to-end latency of the request.';
COMMENT ON COLUMN avengers.route_log.metadata IS 'Per-model usage, fallbacks, errors.';
"""

DOWNGRADE = r"""
DROP SCHEMA avengers CASCADE;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    # The vector extension is left installed: other schemas in the database may use it.
    op.execute(DOWNGRADE)
