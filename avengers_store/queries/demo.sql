-- name: sample_loaded
SELECT count(DISTINCT d.id), count(q.id) FROM avengers.datasets d
LEFT JOIN avengers.queries q ON q.dataset_id = d.id
WHERE d.metadata->>'source_file' = %s

-- name: calibration_queries_by_dataset
SELECT d.name, count(*) FROM avengers.queries q
JOIN avengers.datasets d ON d.id = q.dataset_id AND NOT d.is_ood
WHERE q.split = 'calibration' GROUP BY d.name

-- name: cluster_datasets
SELECT a.cluster, d.name, count(*) AS n
FROM avengers.assignments a
JOIN avengers.active_clustering k ON k.id = a.clustering_id
JOIN avengers.queries q ON q.id = a.query_id
JOIN avengers.datasets d ON d.id = q.dataset_id
GROUP BY a.cluster, d.name ORDER BY a.cluster, n DESC, d.name

-- name: test_questions
SELECT q.id, d.name, q.text, e.embedding
FROM avengers.queries q
JOIN avengers.datasets d ON d.id = q.dataset_id
CROSS JOIN avengers.active_clustering k
JOIN avengers.query_embeddings e ON e.query_id = q.id AND e.space_id = k.space_id
WHERE q.split = 'test' AND d.name LIKE %s
ORDER BY q.id

-- name: test_datasets
SELECT DISTINCT d.name FROM avengers.datasets d
JOIN avengers.queries q ON q.dataset_id = d.id AND q.split = 'test'
WHERE d.name LIKE %s ORDER BY d.name
