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
CALL avengers.comment_columns('avengers.active_clustering', $$
id: Version number (avengers.clusterings.id).
space_id: Embedding space that was clustered.
dimension: Dimension of that space: query vectors must match it.
algorithm: Clustering algorithm.
k: Number of clusters requested.
seed: Random seed of the fit.
params: Other fit parameters.
status: Always active.
n_queries: Number of calibration queries clustered.
inertia: Sum of squared distances of queries to their centroid.
created_at: When the fit started.
activated_at: When this version was made active.
production_weight: Weight of one production outcome against one calibration outcome in the served score (0: calibration only).
half_life: Half-life of production outcomes.
exploration: Exploration policy: off, targeted, thompson or epsilon.
exploration_share: targeted and epsilon: the share of requests that may go to another candidate than the best-ranked.
ood_quantile: Calibration quantile of scaled distances beyond which a query is out of distribution.
change_threshold: z-score of the production update rule's change test (avengers.production_evidence).
exploration_overlap: targeted: the chance of beating the leader above which a candidate is plausible.
$$);

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
CALL avengers.comment_columns('avengers.routed_clusterings', $$
id: Clustering version (avengers.clusterings.id).
active: Whether it is the active clustering.
$$);
