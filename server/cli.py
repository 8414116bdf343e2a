"""The server's commands: `effort serve` and `effort bench serve|router` (dispatched by effort_server.cli)."""

from __future__ import annotations

import dataclasses

from effort_server.cli import add_dataclass_args, config_command


def _cmd_serve(args) -> int:
    import logging
    import signal

    from .config import ServerSettings, load_config_file
    from .engine import EngineSettings

    given = vars(args)
    file = load_config_file(given["config"]) if given.get("config") else {}
    names = {f.name for f in dataclasses.fields(ServerSettings)}
    enames = {f.name for f in dataclasses.fields(EngineSettings)}
    settings = ServerSettings(**{k: v for k, v in {**file, **given}.items() if k in names})
    engine = EngineSettings(**{k: v for k, v in {**file.get("engine", {}), **given}.items() if k in enames})
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from .app import build_app

    app = build_app(settings, engine)
    # uvicorn drains in-flight requests on SIGTERM (up to drain_timeout), then re-raises the signal
    # under the handler it found: with this one the process then exits 0 instead of dying by it
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=settings.drain_timeout,
    )
    return 0


def add_commands(sub, names: list[str]) -> None:
    from .bench import BenchConfig
    from .bench_router import RouterBenchConfig
    from .config import ServerSettings
    from .engine import EngineSettings

    serve = sub.add_parser("serve", help="start the OpenAI-compatible effort-control server")
    add_dataclass_args(serve, ServerSettings, "server", suppress=True)
    add_dataclass_args(serve, EngineSettings, "engine (passed to vLLM)", suppress=True)
    serve.set_defaults(func=_cmd_serve)

    bench = sub.add_parser("bench", help="benchmarks that print a table, with the peer measured in the same run")
    bsub = bench.add_subparsers(dest="bench", required=True)
    bs = bsub.add_parser("serve", help="our server vs vLLM's own OpenAI server on the same model")
    add_dataclass_args(bs, BenchConfig, "benchmark")
    bs.set_defaults(func=config_command("effort_server.server.bench", "BenchConfig", "run_bench"))
    br = bsub.add_parser("router", help="time the router + policy per request against the policy without a router")
    add_dataclass_args(br, RouterBenchConfig, "benchmark")
    br.set_defaults(func=config_command("effort_server.server.bench_router", "RouterBenchConfig", "run_router_bench"))
