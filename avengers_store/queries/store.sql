-- name: schema_objects
-- Every view, materialized view, routine, composite type and trigger in the schema, by
-- (catalog, oid), with pg_identify_object's type and fully qualified identity.
SELECT o.classid::oid, o.objid, i.type, i.identity
FROM (
  SELECT 'pg_class'::regclass AS classid, c.oid AS objid FROM pg_class c
  WHERE c.relnamespace = to_regnamespace(%(s)s) AND c.relkind IN ('v', 'm', 'c')
  UNION ALL
  SELECT 'pg_type'::regclass, t.oid FROM pg_type t
  JOIN pg_class c ON c.oid = t.typrelid AND c.relkind = 'c'
  WHERE t.typnamespace = to_regnamespace(%(s)s)
  UNION ALL
  SELECT 'pg_proc'::regclass, p.oid FROM pg_proc p
  WHERE p.pronamespace = to_regnamespace(%(s)s)
    AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
  UNION ALL
  SELECT 'pg_trigger'::regclass, g.oid FROM pg_trigger g
  JOIN pg_class c ON c.oid = g.tgrelid
  WHERE c.relnamespace = to_regnamespace(%(s)s) AND NOT g.tgisinternal
) AS o
CROSS JOIN LATERAL pg_identify_object(o.classid, o.objid, 0) AS i

-- name: dependent_views
WITH RECURSIVE own(classid, objid) AS (
  SELECT * FROM unnest(%(classids)s::oid[], %(objids)s::oid[])
),
found(oid, depth) AS (
  SELECT r.ev_class, 1
  FROM pg_depend d
  JOIN own o ON o.classid = d.refclassid AND o.objid = d.refobjid
  JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
  JOIN pg_class c ON c.oid = r.ev_class AND c.relkind IN ('v', 'm')
  WHERE NOT EXISTS (SELECT 1 FROM own x
                    WHERE x.classid = 'pg_class'::regclass AND x.objid = r.ev_class)
  UNION
  SELECT r.ev_class, f.depth + 1
  FROM found f
  JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = f.oid
  JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
  JOIN pg_class c ON c.oid = r.ev_class AND c.relkind IN ('v', 'm')
  WHERE r.ev_class <> f.oid AND f.depth < 100
)
SELECT f.oid, max(f.depth) FROM found f GROUP BY f.oid ORDER BY 2, 1

-- name: view_definition
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relkind,
       pg_get_userbyid(c.relowner), pg_get_viewdef(c.oid),
       array_to_string(c.reloptions, ', '), c.relispopulated,
       obj_description(c.oid, 'pg_class')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s

-- name: index_definitions
SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = %(o)s
UNION ALL
SELECT pg_get_triggerdef(g.oid) FROM pg_trigger g
WHERE g.tgrelid = %(o)s AND NOT g.tgisinternal
UNION ALL
SELECT pg_get_ruledef(r.oid) FROM pg_rewrite r
WHERE r.ev_class = %(o)s AND r.rulename <> '_RETURN'

-- name: views_read
SELECT DISTINCT d.refobjid FROM pg_rewrite r
JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
WHERE r.ev_class = %s AND d.refclassid = 'pg_class'::regclass

-- name: other_dependents
WITH own(classid, objid) AS (
  SELECT * FROM unnest(%(classids)s::oid[], %(objids)s::oid[])
),
kept(classid, objid) AS (
  SELECT * FROM own
  UNION ALL SELECT 'pg_class'::regclass::oid, v FROM unnest(%(views)s::oid[]) AS v
)
SELECT DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid),
                pg_describe_object(d.refclassid, d.refobjid, 0)
FROM pg_depend d
JOIN kept k ON k.classid = d.refclassid AND k.objid = d.refobjid
WHERE d.deptype = 'n'
  AND NOT EXISTS (SELECT 1 FROM own o WHERE o.classid = d.classid AND o.objid = d.objid)
  AND NOT EXISTS (SELECT 1 FROM pg_rewrite r JOIN kept x
                    ON x.classid = 'pg_class'::regclass AND x.objid = r.ev_class
                  WHERE d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid)
  AND NOT EXISTS (SELECT 1 FROM pg_trigger g JOIN kept x
                    ON x.classid = 'pg_class'::regclass AND x.objid = g.tgrelid
                  WHERE d.classid = 'pg_trigger'::regclass AND g.oid = d.objid)
ORDER BY 1, 2

-- name: relation_grants
-- GRANT statements for a relation's table and column privileges (the owner's own left out).
SELECT format('GRANT %%s ON TABLE %%s TO %%s%%s', a.privilege_type, %(n)s::text,
              CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
              CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
FROM pg_class c, aclexplode(c.relacl) a
WHERE c.oid = %(o)s AND a.grantee <> c.relowner
UNION ALL
SELECT format('GRANT %%s (%%I) ON TABLE %%s TO %%s%%s', a.privilege_type,
              t.attname, %(n)s::text,
              CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
              CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
FROM pg_class c
JOIN pg_attribute t ON t.attrelid = c.oid AND t.attnum > 0 AND NOT t.attisdropped
CROSS JOIN LATERAL aclexplode(t.attacl) a
WHERE c.oid = %(o)s AND a.grantee <> c.relowner
