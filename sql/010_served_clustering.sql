-- The served clustering: the one lookup of the active version that the profiles, the routing
-- tables and functions, and the library share (at most one is active: clusterings_one_active_idx).

CREATE VIEW avengers.active_clustering AS
SELECT k.id, k.space_id, s.dimension, k.algorithm, k.k, k.seed, k.params, k.status, k.n_queries,
       k.inertia, k.created_at, k.activated_at, k.production_weight, k.half_life, k.exploration,
       k.exploration_share, k.ood_quantile, k.change_threshold
FROM avengers.clusterings k
JOIN avengers.embedding_spaces s ON s.id = k.space_id
WHERE k.status = 'active';
COMMENT ON VIEW avengers.active_clustering IS
  'The served clustering version, with the dimension of its embedding space; no row before the first re-cluster. Switch it with CALL avengers.activate_clustering(id).';
COMMENT ON COLUMN avengers.active_clustering.id IS 'Version number (avengers.clusterings.id).';
COMMENT ON COLUMN avengers.active_clustering.space_id IS 'Embedding space that was clustered.';
COMMENT ON COLUMN avengers.active_clustering.dimension IS 'Dimension of that space: query vectors must match it.';
COMMENT ON COLUMN avengers.active_clustering.algorithm IS 'Clustering algorithm.';
COMMENT ON COLUMN avengers.active_clustering.k IS 'Number of clusters requested.';
COMMENT ON COLUMN avengers.active_clustering.seed IS 'Random seed of the fit.';
COMMENT ON COLUMN avengers.active_clustering.params IS 'Other fit parameters.';
COMMENT ON COLUMN avengers.active_clustering.status IS 'Always active.';
COMMENT ON COLUMN avengers.active_clustering.n_queries IS 'Number of calibration queries clustered.';
COMMENT ON COLUMN avengers.active_clustering.inertia IS 'Sum of squared distances of queries to their centroid.';
COMMENT ON COLUMN avengers.active_clustering.created_at IS 'When the fit started.';
COMMENT ON COLUMN avengers.active_clustering.activated_at IS 'When this version was made active.';
COMMENT ON COLUMN avengers.active_clustering.production_weight IS 'Weight of one production outcome against one calibration outcome in the served score (0: calibration only).';
COMMENT ON COLUMN avengers.active_clustering.half_life IS 'Half-life of production outcomes.';
COMMENT ON COLUMN avengers.active_clustering.exploration IS 'Exploration policy: off, thompson or epsilon.';
COMMENT ON COLUMN avengers.active_clustering.exploration_share IS 'epsilon: share of requests sent to a random candidate.';
COMMENT ON COLUMN avengers.active_clustering.ood_quantile IS 'Calibration quantile of scaled distances beyond which a query is out of distribution.';
COMMENT ON COLUMN avengers.active_clustering.change_threshold IS 'z-score of the production update rule''s change test (avengers.production_evidence).';

-- The clusterings routing serves: the active one, and every ready version a stored policy names
-- (avengers.policies), so that a policy can be shadowed or promoted with another clustering.
-- The profile and routing views are built for these; a query of the active clustering reads
-- its own rows by clustering_id, so the others cost it nothing but disk.
CREATE VIEW avengers.routed_clusterings AS
SELECT k.id, k.status = 'active' AS active
FROM avengers.clusterings k
WHERE k.status = 'active'
   OR (k.status = 'ready'
       AND k.id IN (SELECT (p.policy ->> 'clustering_id')::integer
                    FROM avengers.policies p
                    WHERE jsonb_typeof(p.policy -> 'clustering_id') = 'number'));
COMMENT ON VIEW avengers.routed_clusterings IS
  'The clustering versions routing serves: the active one and every ready one a stored policy names (clustering_id in avengers.policies.policy). The profile and routing views cover these.';
COMMENT ON COLUMN avengers.routed_clusterings.id IS 'Clustering version (avengers.clusterings.id).';
COMMENT ON COLUMN avengers.routed_clusterings.active IS 'Whether it is the active clustering.';
