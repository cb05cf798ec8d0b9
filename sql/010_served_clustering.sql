-- The served clustering: the one lookup of the active version that the profiles, the routing
-- tables and functions, and the library share (at most one is active: clusterings_one_active_idx).

CREATE VIEW avengers.active_clustering AS
SELECT k.id, k.space_id, s.dimension, k.algorithm, k.k, k.seed, k.params, k.status, k.n_queries,
       k.inertia, k.created_at, k.activated_at, k.production_weight, k.half_life, k.exploration,
       k.exploration_share, k.ood_quantile, k.change_threshold, k.exploration_overlap
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
COMMENT ON COLUMN avengers.active_clustering.exploration IS 'Exploration policy: off, targeted, thompson or epsilon.';
COMMENT ON COLUMN avengers.active_clustering.exploration_share IS 'targeted and epsilon: the share of requests that may go to another candidate than the best-ranked.';
COMMENT ON COLUMN avengers.active_clustering.ood_quantile IS 'Calibration quantile of scaled distances beyond which a query is out of distribution.';
COMMENT ON COLUMN avengers.active_clustering.change_threshold IS 'z-score of the production update rule''s change test (avengers.production_evidence).';
COMMENT ON COLUMN avengers.active_clustering.exploration_overlap IS 'targeted: the chance of beating the leader above which a candidate is plausible.';
