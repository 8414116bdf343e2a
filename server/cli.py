"""The `effort` console script: one entry point, subcommands, lazy heavy imports.

Importing this module imports neither vLLM nor training code; each subcommand imports what
it needs when it runs. Every user error ends as one clear line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def add_dataclass_args(parser: argparse.ArgumentParser, cls, title: str, suppress: bool = False) -> None:
    """Expose a config dataclass's fields as --flags, help texts from field metadata.
    `suppress`: leave unset flags out of the namespace (so a config file can fill them)."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "").replace("%", "%%")
        default = f.default if f.default is not dataclasses.MISSING else None
        argdefault = argparse.SUPPRESS if suppress else default
        if f.type in ("bool", bool):
            group.add_argument(flag, action="store_true", default=argdefault, help=help_)
        else:
            typ = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            group.add_argument(flag, type=typ, default=argdefault, help=f"{help_} (default: {default!r})")


def dataclass_from_args(cls, args: argparse.Namespace):
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**kw)


def _cmd_serve(args) -> int:
    import logging
    import signal

    from server.config import ServerSettings, load_config_file
    from server.engine import EngineSettings

    given = vars(args)
    file = load_config_file(given["config"]) if given.get("config") else {}
    names = {f.name for f in dataclasses.fields(ServerSettings)}
    enames = {f.name for f in dataclasses.fields(EngineSettings)}
    settings = ServerSettings(**{k: v for k, v in {**file, **given}.items() if k in names})
    engine = EngineSettings(**{k: v for k, v in {**file.get("engine", {}), **given}.items() if k in enames})
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from server.app import build_app

    import uvicorn

    app = build_app(settings, engine)
    # uvicorn drains in-flight requests on SIGTERM (up to drain_timeout), then re-raises the signal
    # under the handler it found: with this one the process then exits 0 instead of dying by it
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                timeout_graceful_shutdown=settings.drain_timeout)
    return 0


def _cmd_bench_serve(args) -> int:
    from server.bench import BenchConfig, run_bench

    run_bench(dataclass_from_args(BenchConfig, args))
    return 0


def _cmd_train_base(args) -> int:
    from training.base_model import BaseModelConfig, train_base

    train_base(dataclass_from_args(BaseModelConfig, args))
    return 0


def _cmd_train_recipe(args) -> int:
    from training.recipes import RECIPES
    from training.rl import RLConfig, train_recipe

    cfg = dataclass_from_args(RLConfig, args)
    train_recipe(RECIPES[args.recipe], cfg)
    return 0


def _cmd_merge(args) -> int:
    from training.merge import MergeConfig, merge

    merge(dataclass_from_args(MergeConfig, args))
    return 0


def _cmd_eval(args) -> int:
    from training.evaluate import EvalConfig, run_eval

    run_eval(dataclass_from_args(EvalConfig, args))
    return 0


def _cmd_router_fit(args) -> int:
    from training.router import RouterFitConfig, run_fit

    run_fit(dataclass_from_args(RouterFitConfig, args))
    return 0


def _cmd_router_calibrate(args) -> int:
    from training.router import RouterCalibrateConfig, run_calibrate

    run_calibrate(dataclass_from_args(RouterCalibrateConfig, args))
    return 0


def _cmd_bench_router(args) -> int:
    from training.router import RouterBenchConfig, run_router_bench

    run_router_bench(dataclass_from_args(RouterBenchConfig, args))
    return 0


def _cmd_report_base(args) -> int:
    from training.base_report import BaseReportConfig, run_base_report

    run_base_report(dataclass_from_args(BaseReportConfig, args))
    return 0


def _cmd_data(args) -> int:
    from training.tasks import load_task, write_jsonl

    if args.n < 1:
        raise CliError("--n must be >= 1")
    task = load_task(args.task)
    probs = task.problems(args.split, args.n, args.seed)
    write_jsonl(probs, args.out)
    print(f"wrote {len(probs)} problems to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from server.bench import BenchConfig
    from server.config import ServerSettings
    from server.engine import EngineSettings
    from training.base_model import BaseModelConfig
    from training.base_report import BaseReportConfig
    from training.evaluate import EvalConfig
    from training.router import RouterBenchConfig, RouterCalibrateConfig, RouterFitConfig

    p = argparse.ArgumentParser(prog="effort", description="Control how hard a reasoning model thinks.")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the OpenAI-compatible effort-control server")
    add_dataclass_args(serve, ServerSettings, "server", suppress=True)
    add_dataclass_args(serve, EngineSettings, "engine (passed to vLLM)", suppress=True)
    serve.set_defaults(func=_cmd_serve)

    bench = sub.add_parser("bench", help="benchmarks that print a table, with the peer measured in the same run")
    bsub = bench.add_subparsers(dest="bench", required=True)
    bs = bsub.add_parser("serve", help="our server vs vLLM's own OpenAI server on the same model")
    add_dataclass_args(bs, BenchConfig, "benchmark")
    bs.set_defaults(func=_cmd_bench_serve)
    br = bsub.add_parser("router", help="time the router + policy per request against the policy without a router")
    add_dataclass_args(br, RouterBenchConfig, "benchmark")
    br.set_defaults(func=_cmd_bench_router)

    train = sub.add_parser("train", help="train the base model or an adapter")
    tsub = train.add_subparsers(dest="recipe", required=True)
    base = tsub.add_parser("base", help="train the embedded tiny reasoning model from scratch (SFT)")
    add_dataclass_args(base, BaseModelConfig, "base model")
    base.set_defaults(func=_cmd_train_base)
    from training.recipes import RECIPES
    from training.rl import RLConfig

    for kind, cls in RECIPES.items():
        r = tsub.add_parser(kind, help=(cls.__doc__ or kind).strip().splitlines()[0],
                            description=cls.module_doc(), formatter_class=argparse.RawDescriptionHelpFormatter)
        add_dataclass_args(r, RLConfig, f"{kind} (GRPO + LoRA)")
        r.set_defaults(func=_cmd_train_recipe)

    mg = sub.add_parser("merge", help="update-selective merge of a trained adapter into a new adapter")
    from training.merge import MergeConfig

    add_dataclass_args(mg, MergeConfig, "merge")
    mg.set_defaults(func=_cmd_merge)

    ev = sub.add_parser("eval", help="measure accuracy vs reasoning tokens for adapters x efforts/budgets")
    add_dataclass_args(ev, EvalConfig, "evaluation")
    ev.set_defaults(func=_cmd_eval)

    ro = sub.add_parser("router", help="the difficulty router for effort 'auto': fit and calibrate")
    rosub = ro.add_subparsers(dest="router_cmd", required=True)
    rf = rosub.add_parser("fit", help="fit the router from effort-eval results and/or training rollouts")
    add_dataclass_args(rf, RouterFitConfig, "router fit")
    rf.set_defaults(func=_cmd_router_fit)
    rc = rosub.add_parser("calibrate", help="calibrate the auto policy's margin on held-out eval results")
    add_dataclass_args(rc, RouterCalibrateConfig, "router calibrate")
    rc.set_defaults(func=_cmd_router_calibrate)

    rep = sub.add_parser("report", help="measured reports")
    rsub = rep.add_subparsers(dest="report", required=True)
    rb = rsub.add_parser("base", help="the base model's overthinking profile (README table)")
    add_dataclass_args(rb, BaseReportConfig, "base report")
    rb.set_defaults(func=_cmd_report_base)

    data = sub.add_parser("data", help="export a task's problems as JSONL")
    g = data.add_argument_group("data")
    g.add_argument("--task", default="digits", help="task name or JSONL path (default: digits)")
    g.add_argument("--split", default="test", help="train, dev or test (default: test)")
    g.add_argument("--n", type=int, default=500, help="number of problems (default: 500)")
    g.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    g.add_argument("--out", required=True, help="output .jsonl path")
    data.set_defaults(func=_cmd_data)
    return p


def main(argv: list[str] | None = None) -> int:
    from training.tasks import TaskError
    from server.manifest import ManifestError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CliError, TaskError, ManifestError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"effort: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("effort: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
