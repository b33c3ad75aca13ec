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
    assert ("--out" in out) if cmd == "demo" else ("--config" in out and "--root" in out)


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
