"""A read-only web dashboard of the book for the human operator.

- `reader`    everything the page shows, read from the book's SQLite file over a read-only
              connection (``mode=ro``): it works beside the server that holds the book and
              can never write to it.
- `chain`     the audit chain's status, verified incrementally (never the whole chain per refresh).
- `charts`    the equity curve (inline SVG) and the basis/funding chart (PNG), server-side.
- `web`       the Starlette app: GET routes only, the token gate (bearer header, or ``?token=``
              once, then an HttpOnly SameSite=Strict cookie), the page and its polled fragment.
- `command`   ``basis-mcp dashboard --db PATH``: the dashboard of a book served over stdio.

`basis_mcp.server.http` mounts `web` at ``/dashboard`` beside ``/mcp``, reading live margin and
prices from the running desk.
"""
