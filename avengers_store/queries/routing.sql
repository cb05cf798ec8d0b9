-- name: novelty_model
SELECT p.mean::real[], a.directions, a.variances
FROM avengers.novelty_profiles p
CROSS JOIN LATERAL (
  SELECT array_agg(x.direction::real[] ORDER BY x.axis) AS directions,
         array_agg(x.variance ORDER BY x.axis) AS variances
  FROM avengers.novelty_axes x WHERE x.clustering_id = p.clustering_id) AS a
WHERE p.clustering_id = %s
