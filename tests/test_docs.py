"""The documentation tells the truth: links resolve, commands parse, fields and tables exist.

* every relative link in README.md and docs/*.md points at a file of the repository, and a
  ``#anchor`` at a heading of that file;
* every ``pw-ray …`` command shown (in shell code blocks and in inline code), and every
  ``python jobs/<stage>.py …``, is accepted by the real argument parser (``pw_ray.cli.build_parser``);
* every field of the config is described in docs/configuration.md, and every field named there exists;
* the tables section of docs/CONTRACTS.md (path, row unit, key, columns and types of every stage
  table) matches what a real run of the pipeline writes.
"""

from __future__ import annotations

import re
import shlex
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~)(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(?P<code>.+?)\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
SHELL_LANGS = {"bash", "sh", "shell", "console"}


def _text_outside_code(md: str) -> str:
    """The Markdown with fenced blocks, indented blocks and inline code blanked out."""
    md = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), md)
    md = re.sub(r"(?m)^(?: {4}|\t).*$", "", md)
    return INLINE_CODE.sub("", md)


# ----------------------------------------------------------------------------- links and anchors
def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces → hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(md: str) -> set[str]:
    """Every heading anchor of a Markdown text (duplicates get -1, -2 … as on GitHub)."""
    md = FENCE.sub("", md)
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"(?m)^#{1,6}[ \t]+(.+?)[ \t#]*$", md):
        slug = github_slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(md_path: Path) -> list[str]:
    text = _text_outside_code(md_path.read_text())
    return [m.group("target") for m in LINK.finditer(text)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", m.group("target"), re.I)]  # http:, mailto: …


def broken_links(md_path: Path) -> list[str]:
    """``'target: why'`` for each relative link of ``md_path`` that does not resolve."""
    problems = []
    for target in relative_links(md_path):
        path_part, _, anchor = target.partition("#")
        dest = (md_path.parent / path_part).resolve() if path_part else md_path
        if not dest.exists():
            problems.append(f"{target}: no file {dest}")
            continue
        try:
            dest.relative_to(REPO)
        except ValueError:
            problems.append(f"{target}: {dest} is outside the repository")
            continue
        if anchor:
            if dest.suffix != ".md" or dest.is_dir():
                problems.append(f"{target}: an anchor into {dest.name}, which is not Markdown")
            elif anchor not in anchors(dest.read_text()):
                problems.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(REPO)}")
    return problems


@pytest.mark.parametrize("md_path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(md_path):
    assert broken_links(md_path) == [], f"{md_path.relative_to(REPO)}: broken links"


def test_the_link_check_catches_a_missing_file_and_a_missing_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Where it lives\n")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/a.md#where-it-lives) [gone](docs/b.md) [no anchor](docs/a.md#nowhere)\n"
                    "`[code](docs/ignored.md)` [self](#top)\n\n# Top\n")
    problems = broken_links(page)
    assert [p.split(":")[0] for p in problems] == ["docs/b.md", "docs/a.md#nowhere"]


def test_github_slugs():
    assert github_slug("Jobs: exit codes, the last line, resubmitting") == "jobs-exit-codes-the-last-line-resubmitting"
    assert github_slug("`results/results.parquet`") == "resultsresultsparquet"
    assert github_slug("Methods (`pw_ray/evaluate/methods.py`, no Ray)") == "methods-pw_rayevaluatemethodspy-no-ray"


# ----------------------------------------------------------------------------- commands
@dataclass
class Command:
    where: str
    argv: list[str]


def _is_placeholder(token: str) -> bool:
    """A value the docs leave for the reader: ``C``, ``DIR``, ``URI``, ``<set>``, ``$CFG``, ``…``."""
    return bool(re.fullmatch(r"[A-Z][A-Z_]*", token)) or any(c in token for c in "<>$…")


def _split(command: str) -> list[str] | None:
    command = re.split(r"\s(?:#|\||&&|;|→|\|\|)\s?|\s#$", command)[0]
    command = command.replace("[", " ").replace("]", " ")
    try:
        return shlex.split(command)
    except ValueError:
        return None


INVOCATION = re.compile(r"(?:^|(?<=[\s(]))(?:pw-ray(?=\s)|python3? (?P<job>jobs/[\w$.-]+\.py))(?P<rest>.*)")


def commands_in(md_path: Path) -> list[Command]:
    """``pw-ray …`` and ``python jobs/<stage>.py …`` invocations shown in shell blocks and inline code.

    A job entrypoint is the CLI with its stage put first (``jobs/pipeline.py`` is ``run``).
    A log line ``pw-ray <stage> failed: …`` is output, not a command.
    """
    text = md_path.read_text()
    rel = md_path.relative_to(REPO)
    snippets: list[tuple[str, str]] = []
    for m in FENCE.finditer(text):
        if m.group("lang") in SHELL_LANGS:
            line0 = text.count("\n", 0, m.start("body")) + 1
            snippets += [(f"{rel}:{line0 + i}", ln) for i, ln in enumerate(m.group("body").splitlines())]
    outside = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for m in INLINE_CODE.finditer(outside):
        snippets.append((f"{rel}:{outside.count(chr(10), 0, m.start()) + 1}", m.group("code")))
    found = []
    for where, snippet in snippets:
        for m in INVOCATION.finditer(snippet):
            tokens = _split(m.group("rest"))
            if tokens is None:
                continue
            if m.group("job"):
                stage = Path(m.group("job")).stem
                if _is_placeholder(stage):
                    continue
                argv = ["run" if stage == "pipeline" else stage, *tokens]
            else:
                if not tokens or _is_placeholder(tokens[0]) or (len(tokens) > 1 and tokens[1] == "failed:"):
                    continue
                argv = tokens
            found.append(Command(where, argv))
    return found


def check_command(parser, argv: list[str]) -> str | None:
    """None when the parser accepts ``argv`` (placeholders replaced by dummies), else why not."""
    sub_actions = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    sub = sub_actions.choices.get(argv[0])
    if sub is None:
        return f"unknown command {argv[0]!r}; the parser has {sorted(sub_actions.choices)}"
    options = {s: a for a in sub._actions for s in a.option_strings}
    out, i = [argv[0]], 1
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("-"):
            return f"unexpected argument {tok!r}"
        action = options.get(tok.split("=")[0])
        if action is None:
            return f"{argv[0]}: unknown option {tok!r}; it takes {sorted(options)}"
        out.append(tok)
        i += 1
        if action.nargs == 0 or "=" in tok:
            continue
        value = argv[i] if i < len(argv) and not argv[i].startswith("--") else None
        if value is None:
            return f"{argv[0]}: option {tok} needs a value"
        i += 1
        if _is_placeholder(value):
            value = action.choices[0] if action.choices else "placeholder"
        out.append(value)
    for action in sub._actions:  # a command shown without a required option, e.g. `pw-ray evaluate`
        if action.required and not set(action.option_strings) & set(out):
            out += [action.option_strings[0], "placeholder"]
    try:
        parser.parse_args(out)
    except SystemExit:
        return f"the parser refuses {out}"
    return None


ALL_COMMANDS = [c for p in DOCS for c in commands_in(p)]


def test_the_docs_show_commands_of_every_stage():
    shown = {c.argv[0] for c in ALL_COMMANDS}
    assert {"demo", "plan", "ingest", "pretrain", "evaluate", "analyze", "report", "run", "validate"} <= shown


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda c: f"{c.where} {' '.join(c.argv)}")
def test_every_command_shown_is_accepted_by_the_parser(command, capsys):
    from pw_ray.cli import build_parser

    assert check_command(build_parser(), command.argv) is None, command.where


def test_the_command_check_catches_unknown_commands_and_options(capsys):
    from pw_ray.cli import build_parser

    ap = build_parser()
    assert check_command(ap, ["demo", "--out", "DIR"]) is None
    assert check_command(ap, ["evaluate"]) is None
    assert check_command(ap, ["plan", "--config", "C", "--root", "s3://b/p", "--force"]) is None
    assert check_command(ap, ["demo", "--root", "DIR"]) is None
    assert "unknown option '--retry'" in check_command(ap, ["demo", "--retry", "DIR"])
    assert "unknown command" in check_command(ap, ["train", "--config", "C"])
    assert check_command(ap, ["plan", "--log-level", "LOUD"]) is None  # a placeholder value
    assert "refuses" in check_command(ap, ["plan", "--log-level", "loud"])


def test_commands_are_found_in_shell_blocks_and_inline_code(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    page = tmp_path / "p.md"
    page.write_text("Run `pw-ray ingest --config C` or `pw-ray`.\n\n```bash\n"
                    "pw-ray demo [--out DIR]   # note\nray job submit -- python jobs/pipeline.py --config $CFG\n"
                    "```\n\n```\npw-ray evaluate failed: FileNotFoundError: x\n```\n")
    assert [c.argv for c in commands_in(page)] == [
        ["demo", "--out", "DIR"], ["run", "--config", "$CFG"], ["ingest", "--config", "C"]]


# ----------------------------------------------------------------------------- configuration
def config_fields() -> list[str]:
    """Every field path of the experiment config: ``stac.landcover.url``, ``tasks[].kind`` …"""
    from pydantic import BaseModel

    from pw_ray.config import ExperimentConfig

    def models_in(annotation) -> list[type]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [m for arg in typing.get_args(annotation) for m in models_in(arg)]

    def walk(model, prefix: str) -> list[str]:
        out = []
        for name, f in model.model_fields.items():
            path = prefix + name
            out.append(path)
            listy = typing.get_origin(f.annotation) is list
            for sub in models_in(f.annotation):
                out += walk(sub, path + ("[]." if listy else "."))
        return list(dict.fromkeys(out))

    return walk(ExperimentConfig, "")


def test_every_config_field_is_documented():
    doc = (REPO / "docs" / "configuration.md").read_text()
    missing = [f for f in config_fields() if f"`{f}`" not in doc]
    assert missing == [], "config fields missing from docs/configuration.md"


def test_every_field_the_configuration_page_lists_exists():
    doc = (REPO / "docs" / "configuration.md").read_text()
    listed = re.findall(r"(?m)^\| `([\w.\[\]]+)` \|", doc.split("## Every field", 1)[1])
    assert listed, "docs/configuration.md has no field tables under '## Every field'"
    assert sorted(set(listed) - set(config_fields())) == []


# ----------------------------------------------------------------------------- contracts
@dataclass
class TableContract:
    path: str                      # e.g. shards/<set>/region=<r>/<set>-<r>-<chunk>.parquet
    unit: str                      # e.g. "kept chip"
    key: list[str]
    columns: list[tuple[str, list[str]]] = field(default_factory=list)  # (name, allowed types)

    def regex(self) -> re.Pattern:
        seen: set[str] = set()

        def group(m):
            name = m.group(1)
            if name in seen:
                return f"(?P={name})"
            seen.add(name)
            return f"(?P<{name}>[^/]+?)"

        parts = re.split(r"(<\w+>)", self.path)
        return re.compile("".join(group(re.match(r"<(\w+)>", p)) if p.startswith("<") else re.escape(p)
                                  for p in parts) + "$")

    @property
    def literal_length(self) -> int:
        return len(re.sub(r"<\w+>", "", self.path))


ROW_LINE = re.compile(r"^Row: one per (?P<unit>[^.]+)\. Key: (?P<key>`[^`]+`(?:, `[^`]+`)*)\.", re.M)


def parse_contracts(text: str) -> list[TableContract]:
    """The machine-readable part of docs/CONTRACTS.md: the ``## Tables`` section."""
    section = re.search(r"(?ms)^## Tables\n(.*?)(?=^## )", text + "\n## end\n").group(1)
    contracts = []
    for block in re.split(r"(?m)^### ", section)[1:]:
        head = re.match(r"`([^`]+)`", block)
        assert head, f"docs/CONTRACTS.md: a table heading must be the path in backticks: {block[:60]!r}"
        row = ROW_LINE.search(block)
        assert row, f"docs/CONTRACTS.md {head.group(1)}: needs a line 'Row: one per <unit>. Key: `col`.'"
        c = TableContract(head.group(1), row.group("unit").strip(), re.findall(r"`([^`]+)`", row.group("key")))
        for line in block.splitlines():
            cells = re.match(r"^\| `([^`]+)` \| (.+?) \|", line)
            if cells:
                types = [re.sub(r"\[[^\]]*\]$", "", t.strip()) for t in cells.group(2).replace("\\|", "|").split("|")]
                c.columns.append((cells.group(1), types))
        assert c.columns, f"docs/CONTRACTS.md {c.path}: no column table"
        contracts.append(c)
    return contracts


def arrow_type_name(t) -> str:
    """An Arrow type in the docs' spelling: float64, list<float32>, fixed_size_binary …"""
    import pyarrow as pa

    if pa.types.is_fixed_size_binary(t):
        return "fixed_size_binary"
    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list<{arrow_type_name(t.value_type)}>"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{arrow_type_name(t.value_type)}>"
    return {"double": "float64", "float": "float32", "halffloat": "float16",
            "large_string": "string"}.get(str(t), str(t))


def files_by_contract(root: Path, contracts: list[TableContract]) -> dict[str, list[tuple[Path, dict]]]:
    """Every Parquet file under ``root`` assigned to the most specific contract it matches."""
    out: dict[str, list] = {c.path: [] for c in contracts}
    unmatched = []
    for f in sorted(root.rglob("*.parquet")):
        rel = f.relative_to(root).as_posix()
        matches = [(c, m) for c in contracts if (m := c.regex().match(rel))]
        if not matches:
            unmatched.append(rel)
            continue
        c, m = max(matches, key=lambda cm: cm[0].literal_length)
        out[c.path].append((f, m.groupdict()))
    assert unmatched == [], "Parquet files the run wrote that docs/CONTRACTS.md does not describe"
    return out


def check_contracts(root: Path, cfg, contracts: list[TableContract]) -> list[str]:
    """What in the run under ``root`` disagrees with the documented tables (empty: all agrees)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from pw_ray.analyze.stats import DIVERSITY_MEASURES

    sizes = {s.name: s.size for s in cfg.pretrain_sets} | {t.name: t.size for t in cfg.tasks}
    seasons = cfg.stac.seasons

    def kept(name: str) -> int:
        m = pd.read_parquet(root / "manifest" / f"{name}.parquet", columns=["status"])
        return int((m["status"] == "ok").sum())

    def items(name: str) -> int:
        return pd.read_parquet(root / "index" / f"{name}.parquet", columns=["item_id"])["item_id"].nunique()

    n_cells = ((len(cfg.pretrain_sets) + cfg.evaluation.include_zero) * len(cfg.tasks)
               * len(cfg.evaluation.task_regions) * len(cfg.evaluation.methods) * len(cfg.evaluation.seeds))
    # The row units the docs may use, and how many rows each means in this run (by the file's
    # placeholders: a table of a task's chips is counted by the task).
    units = {
        "point": lambda g: sizes[g.get("set", g.get("task"))],
        "chip": lambda g: sizes[g["set"]] * seasons,
        "kept chip": lambda g: kept(g.get("task", g.get("set"))),
        "STAC item": lambda g: items(g["set"]),
        "cell": lambda g: n_cells,
        "pretraining set": lambda g: len(cfg.pretrain_sets),
        "measure and set group": lambda g: len(DIVERSITY_MEASURES),  # no external sets: group `all`
        "pretraining set, task and held-out split": lambda g: (
            len(cfg.pretrain_sets) * len(cfg.tasks) * len({"test", *cfg.plan.exclude_splits})),
    }
    problems = []
    files = files_by_contract(root, contracts)
    for c in contracts:
        if not files[c.path]:
            problems.append(f"{c.path}: the run wrote no such file")
            continue
        if c.unit not in units:
            problems.append(f"{c.path}: row unit {c.unit!r} is not one of {sorted(units)}")
            continue
        # Several files of one table (a set's shards) form one table: group them by placeholders
        # that name a set or task (chunk and region vary within one table).
        groups: dict[tuple, list] = {}
        for f, g in files[c.path]:
            ident = tuple(sorted((k, v) for k, v in g.items() if k in ("set", "task")))
            groups.setdefault(ident, []).append((f, g))
        for ident, members in groups.items():
            label = f"{c.path} {dict(ident)}"
            frames = []
            for f, g in members:
                schema = pq.ParquetFile(f).schema_arrow
                names = [n for n, _ in c.columns]
                if schema.names != names:
                    problems.append(f"{label}: columns {schema.names} in {f.name}, documented {names}")
                    continue
                for name, allowed in c.columns:
                    actual = arrow_type_name(schema.field(name).type)
                    if actual != "null" and actual not in allowed:
                        problems.append(f"{label}: column {name} is {actual}, documented {' | '.join(allowed)}")
                frames.append(pq.ParquetFile(f).read(columns=c.key).to_pandas())
            if not frames:
                continue
            table = pd.concat(frames, ignore_index=True)
            if table.duplicated(c.key).any():
                problems.append(f"{label}: key {c.key} is not unique")
            want = units[c.unit](dict(ident))
            if len(table) != want:
                problems.append(f"{label}: {len(table)} rows, but one per {c.unit} means {want}")
    return problems


CONTRACTS = REPO / "docs" / "CONTRACTS.md"


def test_the_contracts_document_every_stage_table():
    paths = [c.path for c in parse_contracts(CONTRACTS.read_text())]
    for stem in ("points/", "splits/", "index/", "shards/", "manifest/", "tasks/", "runs/embeddings/",
                 "results/results", "results/diversity", "results/correlations", "results/leakage"):
        assert any(p.startswith(stem) for p in paths), stem


def test_the_stage_tables_of_a_run_are_as_documented(tiny_run):
    cfg, _ = tiny_run
    assert check_contracts(Path(cfg.root), cfg, parse_contracts(CONTRACTS.read_text())) == []


def test_the_contract_check_catches_a_wrong_column_and_a_wrong_row_unit(tiny_run):
    cfg, _ = tiny_run
    text = CONTRACTS.read_text()
    wrong_unit = text.replace("### `manifest/<set>.parquet`\n\nRow: one per chip. Key: `chip_id`.",
                              "### `manifest/<set>.parquet`\n\nRow: one per kept chip. Key: `chip_id`.")
    wrong_column = text.replace("| `n_chips` | int64 |", "| `chips` | int64 |")
    assert wrong_unit != text and wrong_column != text
    unit_problems = check_contracts(Path(cfg.root), cfg, parse_contracts(wrong_unit))
    assert unit_problems and all(p.startswith("manifest/<set>.parquet") for p in unit_problems)
    column_problems = check_contracts(Path(cfg.root), cfg, parse_contracts(wrong_column))
    assert column_problems and all(p.startswith("results/diversity.parquet") for p in column_problems)


@pytest.mark.slow
def test_with_several_seasons_the_ingest_tables_are_one_row_per_chip(ray_session, tmp_path):
    """With ``stac.seasons`` = 2 a point has two chips: the chip tables must not be per point."""
    from pw_ray import experiment as E
    from pw_ray.config import parse_config
    from tests.conftest import TINY_CONFIG

    cfg = parse_config(dict(TINY_CONFIG, root=str(tmp_path / "root"),
                            pretrain_sets=[{"name": "europe", "region": "eu", "size": 6, "seed": 1}],
                            tasks=[{"name": "landcover", "kind": "synthetic-landcover", "size": 12, "seed": 11}],
                            stac=dict(TINY_CONFIG["stac"], seasons=2, max_cloud_cover=100,
                                      synthetic=dict(TINY_CONFIG["stac"]["synthetic"], scenes_per_region=2))))
    E.plan(cfg)
    E.ingest(cfg)
    ingest_tables = [c for c in parse_contracts(CONTRACTS.read_text())
                     if c.path.split("/")[0] in ("points", "splits", "index", "shards", "manifest", "tasks")]
    root = Path(cfg.root)
    assert len(__import__("pandas").read_parquet(root / "index" / "europe.parquet")) == 12
    assert check_contracts(root, cfg, ingest_tables) == []
