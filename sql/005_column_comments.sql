-- How the files after this one comment the columns of their views, materialized views and
-- composite types: one call per relation with one "column: comment" line per column, instead of
-- a COMMENT ON COLUMN statement per column. The comments land in the catalog exactly as
-- COMMENT ON COLUMN puts them (\d+ and docs/reference/sql.md read them there), and the SQL
-- fingerprint skips these calls as it skips COMMENT ON statements.

CREATE PROCEDURE avengers.comment_columns(relation regclass, comments text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  entry text[];
  line text;
BEGIN
  FOR line IN
    SELECT l FROM regexp_split_to_table(comments, E'\n') AS l WHERE btrim(l) <> ''
  LOOP
    entry := regexp_match(line, '^\s*([a-z_][a-z0-9_]*):\s+(.+?)\s*$');
    IF entry IS NULL THEN
      RAISE EXCEPTION 'comment_columns(%): % is not "column: comment"', relation, quote_literal(line)
        USING ERRCODE = 'VA422', COLUMN = 'comments';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a
                   WHERE a.attrelid = relation AND a.attname = entry[1] AND a.attnum > 0
                     AND NOT a.attisdropped) THEN
      RAISE EXCEPTION 'comment_columns(%): no column %', relation, entry[1]
        USING ERRCODE = 'VA422', COLUMN = 'comments';
    END IF;
    EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', relation, entry[1], entry[2]);
  END LOOP;
END
$$;
COMMENT ON PROCEDURE avengers.comment_columns(regclass, text) IS
  'Comments the columns of relation from comments, one "column: comment" line per column (blank lines skipped); an unknown column or a line of another shape raises VA422. How the sql/ files comment view and type columns.';
