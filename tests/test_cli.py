"""The command-line frame: command list, help text, lazy imports, logging, python -m."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pumpctl import cli

HEAVY = ("numpy", "matplotlib", "textual", "serial", "transitions")
ROOT = Path(__file__).resolve().parents[1]


def _walk(parser: argparse.ArgumentParser, name: str) -> list[tuple[str, argparse.Action]]:
    """Every (command path, action) of a parser and its sub-parsers."""
    out: list[tuple[str, argparse.Action]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                out += _walk(sub, f"{name} {sub_name}")
        else:
            out.append((name, action))
    return out


def _sub_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_bare_pumpctl_lists_every_command_and_exits_2(capsys: Any) -> None:
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    for name, (text, _module) in cli.COMMANDS.items():
        assert f"{name} " in err
        assert text.split(":")[0] in err


def test_help_is_user_text_not_rst(capsys: Any) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":class:" not in out
    assert "not a medical device" in out
    assert "Exit codes" in out


def test_command_table_matches_what_the_modules_register() -> None:
    """The static table (used without importing anything) names the real commands."""
    by_module: dict[str, set[str]] = {}
    for name, (_text, module) in cli.COMMANDS.items():
        by_module.setdefault(module, set()).add(name)
    for module, names in by_module.items():
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(module).register(sub)
        assert set(sub.choices) == names, module
    assert set(by_module) == set(cli.COMMAND_MODULES)


def test_every_option_of_every_command_has_help_and_every_command_a_description() -> None:
    parser = cli.make_parser()
    missing = [
        f"{where}: {action.option_strings or action.dest}"
        for where, action in _walk(parser, "pumpctl")
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert missing == []
    for name, sub in _sub_parsers(parser).items():
        assert sub.description, f"pumpctl {name} has no description"


@pytest.mark.parametrize(
    "option",
    ["--dose-mg-per-day", "--weight-kg", "--db", "--speed", "--runs", "--workers"],
)
def test_unit_options_name_their_unit_or_default(option: str) -> None:
    texts = [
        action.help or ""
        for _where, action in _walk(cli.make_parser(), "pumpctl")
        if option in action.option_strings
    ]
    assert texts
    for text in texts:
        assert any(word in text for word in ("mg/day", "kg", "SQLite", "times", "default", ">="))


def _imported_after(code: str) -> set[str]:
    """Top-level packages imported by a fresh interpreter running ``code``."""
    probe = (
        "import sys, io, contextlib\n"
        f"{code}\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    return set(out.split())


def test_help_imports_no_command_module_and_nothing_heavy() -> None:
    code = (
        "from pumpctl import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try: cli.main(['--help'])\n"
        "    except SystemExit: pass\n"
        "assert not [m for m in sys.modules if m.startswith('pumpctl.commands.')], sys.modules\n"
    )
    assert not _imported_after(code) & set(HEAVY)


def test_registering_every_command_imports_nothing_heavy() -> None:
    code = "from pumpctl import cli\ncli.make_parser()\n"
    assert not _imported_after(code) & set(HEAVY)


def test_build_imports_only_what_it_runs() -> None:
    code = (
        "from pumpctl import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert cli.main(['build', '--dose-mg-per-day', '600', '--weight-kg', '70']) == 0\n"
        "assert [m for m in sys.modules if m.startswith('pumpctl.commands.')] == "
        "['pumpctl.commands.build'], sys.modules\n"
    )
    assert not _imported_after(code) & set(HEAVY)


def test_build_does_not_load_logging() -> None:
    code = (
        "from pumpctl import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert cli.main(['build', '--dose-mg-per-day', '600', '--weight-kg', '70']) == 0\n"
    )
    assert "logging" not in _imported_after(code)


@pytest.mark.parametrize("command", sorted(cli._PRINT_ONLY))
def test_print_only_commands_do_not_log(command: str) -> None:
    """A command that skips configuring ``logging`` must not import it (it would log
    through Python's bare fallback, without the "pumpctl: warning:" prefix)."""
    code = f"import pumpctl.commands.{command}\n"
    assert "logging" not in _imported_after(code)
    text = (ROOT / "pumpctl" / "commands" / f"{command}.py").read_text()
    assert "logging" not in text and "getLogger" not in text


def test_python_dash_m_pumpctl_works_from_another_directory(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pumpctl", "build", "--dose-mg-per-day", "600", "--weight-kg", "70"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "12.5 mL/h" in done.stdout
    bare = subprocess.run(
        [sys.executable, "-m", "pumpctl"], capture_output=True, text=True, cwd=tmp_path
    )
    assert bare.returncode == 2 and "simulate" in bare.stderr


def test_unknown_command_is_one_line_and_exit_2(capsys: Any) -> None:
    assert cli.main(["nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nosuch" in err and "simulate" in err


def test_quiet_and_verbose_set_the_pumpctl_logger(tmp_path: Path, capsys: Any) -> None:
    import logging

    argv = ["simulate", "anakinra_72h", "--out", str(tmp_path / "o"), "--no-plots"]
    assert cli.main(argv) == 0
    assert "report written to" in capsys.readouterr().err
    assert cli.main([*argv, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "report written" not in captured.err and "report written" not in captured.out
    assert "Expectations met" in captured.out
    assert cli.main(["-v", *argv]) == 0
    assert logging.getLogger("pumpctl").getEffectiveLevel() == logging.DEBUG
    assert cli.main(["--quiet", "-v", "diagram"]) == 2


def test_trumpet_default_density_is_the_library_constant() -> None:
    from pumpctl.commands.trumpet import DEFAULT_DENSITY_G_PER_ML
    from pumpctl.trumpet import WATER_DENSITY_G_PER_ML

    assert DEFAULT_DENSITY_G_PER_ML == WATER_DENSITY_G_PER_ML


def test_unknown_event_filter_is_an_error_naming_the_allowed(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "o"
    assert cli.main(["simulate", "anakinra_72h", "--out", str(out), "--no-plots", "--quiet"]) == 0
    capsys.readouterr()
    db = str(out / "events.db")
    assert cli.main(["log", "--db", db, "--event", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nosuch'" in err and "bag_hung" in err
    assert cli.main(["log", "--db", db, "--event", "bag_hung"]) == 0
    lines = capsys.readouterr().out.splitlines()
    hung = json.loads((out / "report.json").read_text())["bags"]
    assert len(lines) == len(hung) == 10 and all("bag_hung" in x for x in lines)


def test_scenario_names_resolve_to_shipped_examples(tmp_path: Path, monkeypatch: Any) -> None:
    from pumpctl.errors import InputError
    from pumpctl.sim.scenario import load_scenario, shipped_examples

    monkeypatch.chdir(tmp_path)
    assert "anakinra_72h" in shipped_examples() and "occlusion" in shipped_examples()
    assert load_scenario("anakinra_72h").name == load_scenario("anakinra_72h.toml").name
    with pytest.raises(InputError) as exc:
        load_scenario("anakinra_27h")
    assert "anakinra_72h" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(InputError):
        load_scenario("sub/anakinra_72h")  # a path is a path, never a shipped name


def test_a_module_missing_from_the_table_still_lists_and_runs(
    tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    (tmp_path / "pumpctl_extra_cmd.py").write_text(
        "def register(sub):\n"
        "    p = sub.add_parser('extra', help='an extra command', description='extra')\n"
        "    p.set_defaults(func=run)\n"
        "def run(args):\n"
        "    import logging\n"
        "    logging.getLogger('pumpctl.extra').info('a note from inside run')\n"
        "    print('extra ran')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "pumpctl_extra_cmd"))
    assert cli.main([]) == 2
    assert "an extra command" in capsys.readouterr().err
    assert cli.main(["extra"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "extra ran\n" and captured.err == "a note from inside run\n"
    assert cli.main(["extra", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert cli.main(["diagram"]) == 0


# -- --out never deletes what pumpctl did not write ------------------------------------


def _simulate_out(tmp_path: Path, out: Path | str, capsys: Any) -> tuple[int, str]:
    from tests.helpers import write_scenario

    sc = write_scenario(tmp_path, duration_h=2)
    code = cli.main(["simulate", str(sc), "--out", str(out), "--no-plots"])
    return code, capsys.readouterr().err


def test_simulate_out_refuses_a_directory_with_other_files_and_keeps_them(
    tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "sub"
    (out / "inner").mkdir(parents=True)
    (out / "a.txt").write_text("x")
    code, err = _simulate_out(tmp_path, out, capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "'a.txt'" in err and "pumpctl did not write" in err and "allowed:" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "inner"]
    assert (out / "a.txt").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir() if ".old." in p.name] == []


def test_simulate_out_replaces_a_previous_report(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "out"
    assert _simulate_out(tmp_path, out, capsys)[0] == 0
    (out / "report.md").write_text("old")
    assert _simulate_out(tmp_path, out, capsys)[0] == 0
    assert (out / "report.md").read_text() != "old"
    assert {"report.json", "report.md", "events.db"} <= {p.name for p in out.iterdir()}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_simulate_out_dot_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in (".", ".."):
        code, err = _simulate_out(tmp_path, out, capsys)
        assert code == 2 and err.count("\n") == 1 and "current directory" in err, err
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "s.toml",
        "work",
    ]


def test_report_out_keeps_other_files_and_the_log_it_reads(tmp_path: Path, capsys: Any) -> None:
    run = tmp_path / "run"
    assert _simulate_out(tmp_path, run, capsys)[0] == 0
    db = run / "events.db"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert cli.main(["report", str(db), "--out", str(other), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'notes.txt'" in err
    assert (other / "notes.txt").read_text() == "keep"
    assert cli.main(["report", str(db), "--out", str(run), "--no-plots"]) == 2
    assert "holds the event log" in capsys.readouterr().err and db.is_file()
    assert cli.main(["report", str(db), "--out", str(tmp_path / "rep"), "--no-plots"]) == 0
    assert cli.main(["report", str(db), "--out", str(tmp_path / "rep"), "--no-plots"]) == 0
    assert (tmp_path / "rep" / "report.json").is_file()


def test_report_of_a_directory_says_it_is_a_directory(tmp_path: Path, capsys: Any) -> None:
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a directory" in err
