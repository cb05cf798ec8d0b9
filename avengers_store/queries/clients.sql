-- name: serving
-- The active clustering and the space routing embeds in (its space; the active space when
-- nothing is clustered yet), in one round trip.
SELECT k.id, s.id, s.embedder, s.dimension, s.active, s.params, s.created_at
FROM avengers.embedding_spaces s
LEFT JOIN avengers.active_clustering k ON true
WHERE s.id = coalesce(k.space_id, (SELECT a.id FROM avengers.embedding_spaces a WHERE a.active))
