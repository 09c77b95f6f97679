"""``graphwire gateway`` (the HTTP API) and ``graphwire gateway-key`` (a new API key)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from graphwire.processors.cli.common import EXIT_OK, settings_from


def gateway_command(args: argparse.Namespace) -> int:
    import uvicorn

    from graphwire.processors.cli.common import tune_gc
    from graphwire.processors.gateway.app import create_app
    from graphwire.processors.logs import setup_logging

    settings = settings_from(args)
    updates = {k: v for k, v in (("gateway_host", args.host), ("gateway_port", args.port)) if v}
    settings = settings.model_copy(update=updates)
    setup_logging(settings.log_level, settings.log_format)
    app = create_app(settings)  # fails here, with one line, when no credentials are configured
    tune_gc(settings.gc_young_threshold)  # the routes, graphs and modules are alive for good
    uvicorn.run(app, host=settings.gateway_bind_host, port=settings.gateway_port, loop="uvloop",
                log_config=None, access_log=False, timeout_graceful_shutdown=10)
    return EXIT_OK


def gateway_key_command(args: argparse.Namespace) -> int:
    from graphwire.processors.gateway.auth import new_key

    graphs = [g.strip() for g in args.graphs.split(",") if g.strip()] or ["*"]
    key, entry = new_key(args.name, graphs, args.rate, rotation=args.rotation,
                         operator=args.operator)
    print(f"API key for {args.name} (shown once; keep it secret): {key}")
    print("add this entry to GRAPHWIRE_GATEWAY_API_KEYS (a JSON list) or its file:")
    print(json.dumps(entry))
    return EXIT_OK


def add_parsers(sub: Any, kafka_flags: Any) -> None:
    p = sub.add_parser("gateway", help="serve the HTTP API (FastAPI) in front of Kafka")
    kafka_flags(p)
    p.add_argument("--host", help="listen address (GRAPHWIRE_GATEWAY_HOST; default 0.0.0.0, "
                   "127.0.0.1 when GRAPHWIRE_GATEWAY_AUTH=false)")
    p.add_argument("--port", type=int, help="listen port (GRAPHWIRE_GATEWAY_PORT, 8000)")
    p.set_defaults(func=gateway_command, is_async=False)

    p = sub.add_parser("gateway-key", help="make an API key and print its settings entry")
    p.add_argument("name", help="who the key is for (recorded with every request)")
    p.add_argument("--graphs", default="*", help="comma-separated graphs it may run (default *)")
    p.add_argument("--rate", type=int, help="requests per minute (default the gateway's)")
    p.add_argument("--rotation", action="store_true",
                   help="the key replaces another of the same name (same caller, same data); "
                        "remove the old entry once clients use the new key")
    p.add_argument("--operator", action="store_true",
                   help='the key\'s caller is an operator ("role": "operator"): it sees and '
                        "acts on every run, also those produced to Kafka directly")
    p.set_defaults(func=gateway_key_command, is_async=False)
