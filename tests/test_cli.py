import subprocess
import sys

import pytest

from pw_ray.cli import build_parser, main

SUBCOMMANDS = ["demo", "plan", "ingest", "pretrain", "evaluate", "analyze", "report", "run"]


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: pw-ray " + cmd in out
    assert "--config" in out and "--root" in out


def test_bad_config_exits_2_naming_the_field(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"root: {tmp_path}\npretrain_sets:\n  - {{name: x, region: mars, size: 5}}\n")
    assert main(["plan", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "pretrain_sets[0].region" in err and "'mars'" in err


def test_validate_prints_defaults(tmp_path, capsys):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(f"root: {tmp_path}\npretrain_sets:\n  - {{name: eu, region: eu, size: 5}}\n")
    assert main(["validate", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "size_px: 96" in out and "preset: tiny" in out


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "pw_ray.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout


def test_validate_warns_when_no_cell_can_be_scored(tmp_path, caplog):
    cfg = tmp_path / "notasks.yaml"
    cfg.write_text(f"root: {tmp_path}\npretrain_sets:\n  - {{name: eu, region: eu, size: 5}}\n")
    assert main(["validate", "--config", str(cfg)]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("no tasks" in w and "no cell can be scored" in w for w in warnings)


def test_demo_takes_root_like_every_command():
    for flag in ("--root", "--out"):
        assert build_parser().parse_args(["demo", flag, "/tmp/somewhere"]).out == "/tmp/somewhere"
    assert build_parser().parse_args(["demo"]).out == "pw-ray-demo"


def test_validate_writes_nothing(tmp_path, capsys):
    root = tmp_path / "not-yet" / "root"
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(f"root: {root}\npretrain_sets:\n  - {{name: eu, region: eu, size: 5}}\n")
    before = sorted(tmp_path.rglob("*"))
    assert main(["validate", "--config", str(cfg)]) == 0
    assert sorted(tmp_path.rglob("*")) == before and not root.exists()
    # an existing root: no probe file either
    root.mkdir(parents=True)
    assert main(["validate", "--config", str(cfg)]) == 0
    assert list(root.iterdir()) == []


def test_validate_still_refuses_a_root_that_cannot_be_created(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"root: {blocker / 'sub'}\npretrain_sets:\n  - {{name: eu, region: eu, size: 5}}\n")
    assert main(["validate", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "root: storage root" in err and "is not a folder" in err
