"""The console: read-only pages over the store and its traffic (``/console`` in ``avengers
serve``, or ``avengers console`` alone). Each page's data comes from named SQL in sql/ that it
prints for analysts; its charts are inline SVG drawn on the server (``charts``)."""
