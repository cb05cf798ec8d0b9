"""Rerunnable SQL definitions (views, materialized views, functions, procedures), applied in
file-name order by ``avengers db upgrade``. Objects here are dropped and re-created on change."""
