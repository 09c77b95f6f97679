"""The run inspector: a web page served by the gateway at ``/ui``.

- ``routes``     the routers ``api`` (JSON, ``/ui/api``) and ``pages`` (shells, htmx fragments);
                 ``mount()`` adds them, the static files and the Inspector to the app
- ``inspector``  each page's model, from the audit tables, Redis, checkpoints and the registry
- ``queries``    the audit-table SQL: one caller's scope (an operator's: all), keyset pages
- ``drawing``    the graph (LangGraph ``get_graph()``) and the timeline as SVG geometry
- ``lag``        consumer lag per partition
- ``security``   Content-Security-Policy and CSRF (double submit)
- ``templates/`` Jinja2 (autoescaped); ``static/`` htmx (vendored from npm), ui.js, ui.css
"""

from graphwire.processors.gateway.ui.routes import mount

__all__ = ["mount"]
