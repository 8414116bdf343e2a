"""The layout's promises: one import namespace, and a server that imports nothing of training."""

import dataclasses
import subprocess
import sys

import pytest

SERVER_PATHS = [
    "effort_server.server.app",
    "effort_server.server.service",
    "effort_server.server.bench",
    "effort_server.server.bench_router",
    "effort_server.server.cli",
]


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    return set(out.stdout.split())


@pytest.mark.parametrize("module", SERVER_PATHS)
def test_server_imports_nothing_of_training(module):
    mods = _loaded_after(f"import {module}")
    assert module in mods
    assert not [m for m in mods if m.startswith("effort_server.training")]


def test_serve_command_loads_only_the_server_half():
    code = (
        "from effort_server import cli; p = cli.build_parser(['serve', '--port', '1']); "
        "a = p.parse_args(['serve', '--port', '1'])"
    )
    mods = _loaded_after(code)
    assert "effort_server.server.cli" in mods
    assert not [m for m in mods if m.startswith("effort_server.training")]


def test_no_generic_top_level_packages():
    """Run from / so the checkout's own folders are not on the path: only effort_server is importable."""
    for name in ("server", "training"):
        r = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, cwd="/")
        assert r.returncode != 0, f"a top-level package {name!r} is installed"
    subprocess.run(
        [sys.executable, "-c", "import effort_server.server, effort_server.training, effort_server.contract"],
        check=True,
        cwd="/",
    )


def test_help_lists_every_command():
    r = subprocess.run([sys.executable, "-m", "effort_server.cli", "--help"], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0
    for c in ("serve", "bench", "train", "merge", "eval", "router", "report", "data"):
        assert c in r.stdout


def _docstrings():
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    for folder in ("effort_server", "server", "training"):
        for f in sorted((repo / folder).rglob("*.py")):
            tree = ast.parse(f.read_text())
            for node in [tree, *ast.walk(tree)]:
                if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        yield f"{f.relative_to(repo)}:{getattr(node, 'name', 'module')}", doc


def test_docstrings_are_contracts_not_histories():
    """A docstring states a contract in at most 15 lines; history lives in docs/LOG.md."""
    long = {where: len(doc.splitlines()) for where, doc in _docstrings() if len(doc.splitlines()) > 15}
    assert not long, long


COMMANDS = [
    ["serve"],
    ["bench", "serve"],
    ["bench", "router"],
    ["train", "base"],
    ["train", "dler"],
    ["train", "dler-da"],
    ["train", "e1"],
    ["merge"],
    ["profile"],
    ["eval"],
    ["router", "fit"],
    ["router", "calibrate"],
    ["report", "base"],
    ["data"],
]


def _help(args: list[str]) -> str:
    env = {"COLUMNS": "100", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-m", "effort_server.cli", *args], capture_output=True, text=True, cwd="/", env=env
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_help_is_short_and_help_all_lists_every_flag():
    from effort_server.server.config import ServerSettings
    from effort_server.server.engine import EngineSettings
    from effort_server.training.recipes.e1 import E1Options

    for cmd in COMMANDS:
        short = _help([*cmd, "--help"])
        assert len(short.splitlines()) <= 40, (cmd, len(short.splitlines()))
    full_serve = _help(["serve", "--help-all"])
    full_e1 = _help(["train", "e1", "--help-all"])
    short_serve = _help(["serve", "--help"])
    for cls, text in ((ServerSettings, full_serve), (EngineSettings, full_serve), (E1Options, full_e1)):
        for f in dataclasses.fields(cls):
            assert "--" + f.name.replace("_", "-") in text, f.name
    assert "--max-queue" not in short_serve and "more server options: --help-all" in short_serve


def test_hidden_flags_still_parse():
    from effort_server.cli import build_parser

    argv = ["train", "e1", "--warmup-min-steps", "7", "--anchor-short", "0.3"]
    args = build_parser(argv).parse_args(argv)
    assert args.warmup_min_steps == 7 and args.anchor_short == "0.3"
    argv = ["serve", "--max-queue", "5"]
    assert build_parser(argv).parse_args(argv).max_queue == 5


def test_one_prompt_renderer():
    """Only effort_server/contract/prompt.py calls the chat template (server, evaluator, RL use it)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    callers = sorted(
        str(f.relative_to(repo))
        for folder in ("effort_server", "server", "training", "scripts")
        for f in (repo / folder).rglob("*.py")
        if "apply_chat_template(" in f.read_text()
    )
    assert callers == ["effort_server/contract/prompt.py"]


def test_control_goes_into_the_last_user_message(tokenizer):
    from effort_server.contract.manifest import Control
    from effort_server.contract.prompt import chat_ids, render_chat, with_control

    c = Control(
        kind="prompt-prefix", template="Think for effort {effort} of full.\n{prompt}", calibration=[(0, 0.2), (1, 1)]
    )
    msgs = [
        {"role": "user", "content": "a1"},
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": "b2"},
    ]
    out = with_control(msgs, c, effort=0.5)
    assert [m["content"] for m in out] == ["a1", "x", "Think for effort 0.60 of full.\nb2"]
    assert msgs[2]["content"] == "b2"  # the caller's messages are untouched
    assert with_control(msgs, c, value=0.5)[2]["content"].startswith("Think for effort 0.50 ")
    assert with_control(msgs, None, effort=0.5) == msgs
    assert with_control(msgs, Control(), effort=0.5) == msgs
    text = render_chat(tokenizer, "b2", control=c, value=0.5)
    assert text.endswith("Think for effort 0.50 of full.\nb2<|im_end|>\n<|im_start|>assistant\n"), text
    assert chat_ids(tokenizer, "b2", control=c, value=0.5) == tokenizer.encode(text, add_special_tokens=False)


def test_document_links_resolve():
    """Every relative link in the README and docs/ names a file that exists (links are relative to their page)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    broken = []
    for md in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", md.read_text()):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            if not (md.parent / target.split("#")[0]).exists():
                broken.append(f"{md.name}: {target}")
    assert broken == []
