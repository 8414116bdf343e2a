"""Training's commands: `effort train|merge|profile|eval|router|report|data` (dispatched by effort_server.cli)."""

from __future__ import annotations

import argparse

from effort_server import cli as top
from effort_server.cli import CliError, add_dataclass_args, config_command, dataclass_from_args


def _cmd_train_recipe(args) -> int:
    from .recipes import RECIPES
    from .rl import RLConfig, train_recipe

    cls = RECIPES[args.recipe]
    options = dataclass_from_args(cls.Options, args) if cls.Options else None
    train_recipe(cls, dataclass_from_args(RLConfig, args), options=options)
    return 0


def _cmd_data(args) -> int:
    from .tasks import load_task, write_jsonl

    if args.n < 1:
        raise CliError("--n must be >= 1")
    task = load_task(args.task)
    probs = task.problems(args.split, args.n, args.seed)
    write_jsonl(probs, args.out)
    print(f"wrote {len(probs)} problems to {args.out}")
    return 0


def add_commands(sub, names: list[str]) -> None:
    from .base_model import BaseModelConfig
    from .base_report import BaseReportConfig
    from .evaluate import EvalConfig
    from .merge import MergeConfig
    from .profile import ProfileConfig
    from .recipes import RECIPES
    from .rl import RLConfig
    from .router_fit import RouterCalibrateConfig, RouterFitConfig

    train = sub.add_parser("train", help="train the base model or an adapter")
    tsub = train.add_subparsers(dest="recipe", required=True)
    base = tsub.add_parser("base", help="train the embedded tiny reasoning model from scratch (SFT)")
    add_dataclass_args(base, BaseModelConfig, "base model")
    base.set_defaults(func=config_command("effort_server.training.base_model", "BaseModelConfig", "train_base"))
    for kind, cls in RECIPES.items():
        r = tsub.add_parser(
            kind,
            help=(cls.__doc__ or kind).strip().splitlines()[0],
            description=cls.module_doc() if top.FULL_HELP else cls.module_doc().split("\n\n")[0],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_dataclass_args(r, RLConfig, f"{kind} (GRPO + LoRA)")
        if cls.Options:
            add_dataclass_args(r, cls.Options, f"{kind} options")
        r.set_defaults(func=_cmd_train_recipe)

    mg = sub.add_parser("merge", help="update-selective merge of a trained adapter into a new adapter")
    add_dataclass_args(mg, MergeConfig, "merge")
    mg.set_defaults(func=config_command("effort_server.training.merge", "MergeConfig", "merge"))

    pr = sub.add_parser("profile", help=top.COMMANDS["profile"][1])
    add_dataclass_args(pr, ProfileConfig, "profile")
    pr.set_defaults(func=config_command("effort_server.training.profile", "ProfileConfig", "run_profile"))

    ev = sub.add_parser("eval", help="measure accuracy vs reasoning tokens for adapters x efforts/budgets")
    add_dataclass_args(ev, EvalConfig, "evaluation")
    ev.set_defaults(func=config_command("effort_server.training.evaluate", "EvalConfig", "run_eval"))

    ro = sub.add_parser("router", help="the difficulty router for effort 'auto': fit and calibrate")
    rosub = ro.add_subparsers(dest="router_cmd", required=True)
    rf = rosub.add_parser("fit", help="fit the router from effort-eval results and/or training rollouts")
    add_dataclass_args(rf, RouterFitConfig, "router fit")
    rf.set_defaults(func=config_command("effort_server.training.router_fit", "RouterFitConfig", "run_fit"))
    rc = rosub.add_parser("calibrate", help="calibrate the auto policy's margin on held-out eval results")
    add_dataclass_args(rc, RouterCalibrateConfig, "router calibrate")
    rc.set_defaults(func=config_command("effort_server.training.router_fit", "RouterCalibrateConfig", "run_calibrate"))

    rep = sub.add_parser("report", help="measured reports")
    rsub = rep.add_subparsers(dest="report", required=True)
    rb = rsub.add_parser("base", help="the base model's overthinking profile")
    add_dataclass_args(rb, BaseReportConfig, "base report")
    rb.set_defaults(func=config_command("effort_server.training.base_report", "BaseReportConfig", "run_base_report"))

    data = sub.add_parser("data", help="export a task's problems as JSONL")
    g = data.add_argument_group("data")
    g.add_argument("--task", default="digits", help="task name or JSONL path (default: digits)")
    g.add_argument("--split", default="test", help="train, dev or test (default: test)")
    g.add_argument("--n", type=int, default=500, help="number of problems (default: 500)")
    g.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    g.add_argument("--out", required=True, help="output .jsonl path")
    data.set_defaults(func=_cmd_data)
