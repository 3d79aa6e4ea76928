import argparse
import glob
import os
import re
import subprocess
import sys
import typing

import pytest
from pydantic import BaseModel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_config_reference_is_up_to_date():
    proc = subprocess.run([sys.executable, "tools/config_reference.py", "--check"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_readme_gives_the_two_commands_and_ci_calls_make_test():
    readme = open(os.path.join(REPO, "README.md")).read()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in open(os.path.join(REPO, ".ci", "run")).read()


# ---- the docs checker: links resolve, named commands and config keys exist -------------------------------------

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
INLINE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
# `gandist <command> [<subcommand>]`: not gandist.x, gandist-x or a path ending in gandist
COMMAND = re.compile(r"(?<![\w./-])gandist[ \t]+([a-z][a-z0-9-]*)(?:[ \t]+([a-z][a-z0-9_-]*))?(?![\w./=-])")
FILE_SUFFIXES = ("py", "yaml", "yml", "json", "jsonl", "md", "png", "pt", "pth", "txt", "sh", "tar", "toml", "cfg", "npz")
# misspelt keys the docs show on purpose, next to the error gandist prints for them
SHOWN_AS_ERRORS = {"train.batch_sise", "train.foo"}


def doc_files(repo: str = REPO) -> list[str]:
    """README.md and every docs/*.md page."""
    return [os.path.join(repo, "README.md")] + sorted(glob.glob(os.path.join(repo, "docs", "*.md")))


def code_spans(text: str) -> list[str]:
    """Fenced blocks and inline code spans of a markdown text."""
    blocks = [m.group(0) for m in FENCE.finditer(text)]
    rest = FENCE.sub("", text)
    return blocks + [m.group(2) for m in INLINE.finditer(rest)]


def without_code(text: str) -> str:
    """The text with fenced blocks and inline code removed (links inside code are not links)."""
    return INLINE.sub("", FENCE.sub("", text))


def github_anchor(heading: str) -> str:
    """GitHub's heading anchor: markup dropped, lowercase, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").replace("*", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor the headings of a markdown text define (duplicates get -1, -2, ... as on GitHub)."""
    found, counts = set(), {}
    for m in HEADING.finditer(FENCE.sub("", text)):
        base = github_anchor(m.group(1))
        n = counts.get(base, 0)
        found.add(base if n == 0 else f"{base}-{n}")
        counts[base] = n + 1
    return found


def broken_links(path: str, text: str) -> list[str]:
    """Relative links of one markdown file whose file or #anchor does not exist."""
    problems = []
    for m in LINK.finditer(without_code(text)):
        target = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        if not os.path.exists(dest):
            problems.append(f"link {target}: no file {dest}")
            continue
        if anchor and dest.endswith(".md") and anchor not in anchors(open(dest).read()):
            problems.append(f"link {target}: no heading with anchor #{anchor}")
    return problems


def cli_commands() -> dict[str, set[str] | None]:
    """gandist's commands: name -> its subcommands (subparsers or the first positional's choices), None if free."""
    from gandist.cli import build_parser

    commands = {}
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                subs = None
                for a in sub._actions:
                    if isinstance(a, argparse._SubParsersAction):
                        subs = set(a.choices)
                        break
                    if not a.option_strings and a.dest != "help":
                        subs = set(a.choices) if a.choices else None
                        break
                commands[name] = subs
    return commands


def unknown_commands(text: str, commands: dict) -> list[str]:
    """`gandist X [Y]` in code that names no command X, or no subcommand Y of a command that has fixed ones."""
    problems = []
    for span in code_spans(text):
        for m in COMMAND.finditer(span):
            name, sub = m.group(1), m.group(2)
            if name not in commands:
                problems.append(f"gandist {name}: no such command (commands: {', '.join(sorted(commands))})")
            elif commands[name] is not None and sub is not None and sub not in commands[name]:
                problems.append(f"gandist {name} {sub}: no such subcommand (choose from {sorted(commands[name])})")
    return problems


def _models(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def config_keys() -> set[str]:
    """Every dotted key of ExperimentConfig, sections included, across discriminated unions and lists."""
    from gandist.config import ExperimentConfig

    keys = set()

    def walk(model, prefix):
        for name, field in model.model_fields.items():
            keys.add(prefix + name)
            for sub in _models(field.annotation):
                walk(sub, prefix + name + ".")

    walk(ExperimentConfig, "")
    return keys


def sections() -> list[str]:
    """Top-level config names that hold keys (model, loss, ..., eval)."""
    from gandist.config import ExperimentConfig

    return [n for n, f in ExperimentConfig.model_fields.items() if _models(f.annotation)]


def _expand_braces(token: str) -> list[str]:
    """watchdog.bounds.{loss,grad_norm} -> watchdog.bounds.loss, watchdog.bounds.grad_norm."""
    m = re.search(r"\{([\w,\s]+)\}", token)
    if not m:
        return [token]
    return [t for part in m.group(1).split(",")
            for t in _expand_braces(token[:m.start()] + part.strip() + token[m.end():])]


def named_keys(text: str, section_names: list[str]) -> list[str]:
    """Dotted config keys (section.key(.key)*) named in code spans; file names and module paths are not keys."""
    key = re.compile(r"(?<![\w./\[-])(?:%s)(?:\.(?:[A-Za-z_]\w*|\d+|\{[\w,\s]+\}))+(?![\w(/-])" % "|".join(section_names))
    found = []
    for span in code_spans(text):
        for m in key.finditer(span):
            token = re.sub(r"\.\d+(?=\.|$)", "", m.group(0))  # penalties.0.weight: list items by index
            if "." not in token:
                continue
            if token.rsplit(".", 1)[-1] in FILE_SUFFIXES:
                continue
            found += _expand_braces(token)
    return found


def docs_problems(repo: str = REPO) -> list[str]:
    """Every broken link, unknown command and unknown config key in README.md and docs/*.md."""
    commands, keys, names = cli_commands(), config_keys(), sections()
    problems = []
    for path in doc_files(repo):
        text = open(path).read()
        where = os.path.relpath(path, repo)
        problems += [f"{where}: {p}" for p in broken_links(path, text)]
        problems += [f"{where}: {p}" for p in unknown_commands(text, commands)]
        problems += [f"{where}: `{k}` is no config key" for k in named_keys(text, names)
                     if k not in keys and k not in SHOWN_AS_ERRORS]
    return problems


def test_every_docs_link_command_and_config_key_exists():
    problems = docs_problems()
    assert not problems, "\n".join(problems)


def test_docs_checker_finds_a_broken_link_a_made_up_command_and_a_made_up_key(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## Two words, here\n\ntext\n")
    (tmp_path / "README.md").write_text(
        "# Readme\n\n"
        "[ok](docs/page.md) [ok anchor](docs/page.md#two-words-here) [self](#readme) [web](https://example.com)\n"
        "[missing](docs/nope.md) [bad anchor](docs/page.md#three-words)\n\n"
        "```bash\ngandist train configs/x.yaml --set train.steps=3\ngandist fly configs/x.yaml\n"
        "gandist data shrads SRC DEST\n```\n\n"
        "Set `train.batch_size`, `watchdog.spike.{k,window}`, `penalties=[{kind: r1}]`, `gandist/train/loop.py`,\n"
        "`train.py`, `penalties.0.weight`, `gandist.data.base.micro_batch_start` (all fine) and `train.batch_sixe`,\n"
        "`watchdog.bounds.{loss,speed}`, `penalties.1.wieght` and `optim.g.learning_rate` (made up).\n")
    problems = docs_problems(str(tmp_path))
    text = "\n".join(problems)
    assert "link docs/nope.md" in text and "link docs/page.md#three-words" in text
    assert "gandist fly: no such command" in text and "gandist data shrads: no such subcommand" in text
    assert sorted(p.split("`")[1] for p in problems if "no config key" in p) == [
        "optim.g.learning_rate", "penalties.wieght", "train.batch_sixe", "watchdog.bounds.speed"]
    assert len(problems) == 8, text


@pytest.mark.parametrize("heading, anchor", [
    ("Models at published scale: BigGAN, BigGAN-deep, StyleGAN2", "models-at-published-scale-biggan-biggan-deep-stylegan2"),
    ("Distributed training: DDP, DeepSpeed ZeRO 1/2/3, cross-replica batch norm",
     "distributed-training-ddp-deepspeed-zero-123-cross-replica-batch-norm"),
    ("`eval:` section keys", "eval-section-keys"),
])
def test_github_anchor_rule(heading, anchor):
    assert github_anchor(heading) == anchor
