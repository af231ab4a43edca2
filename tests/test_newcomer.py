"""The newcomer's path: README's commands, the bin/ launchers, --help and --version everywhere,
one-line answers instead of tracebacks."""
import io
import logging
import os
import re
import shutil
import site
import subprocess
import sys

import pytest

from whatsup import __version__, config
from whatsup.cli.progress import Progress
from whatsup.cli.whatsupd import warn_plaintext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {"whatsup": "whatsup.cli.whatsup", "whatsupd": "whatsup.cli.whatsupd",
            "whatsup-shell": "whatsup.cli.shell", "whatsup-reshard": "whatsup.cli.reshard"}


def run(*args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=60, **kw)


def test_readme_opens_with_two_commands_that_make_and_use_a_venv_and_ci_runs_the_second():
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```sh\n(.*?)\n```", f.read(), re.S)[:2]
    assert blocks == ["python3 -m venv .venv && .venv/bin/python -m pip install -e . && bin/whatsupd",
                      "python3 -m venv .venv && .venv/bin/python -m pip install -e '.[test]' && "
                      ".venv/bin/python -m pytest -n 2 --dist loadgroup --no-loadscope-reorder"]
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    pattern = re.search(r'grep -m1 -E "(.*)" README.md', ci).group(1).replace("\\\\", "\\")
    assert re.match(pattern, blocks[1])
    with open(os.path.join(ROOT, ".gitignore")) as f:
        assert ".venv/" in f.read().split()


def test_every_command_has_version_and_help_and_is_installed(tmp_path):
    with open(os.path.join(ROOT, "setup.cfg")) as f:
        scripts = f.read()
    for command, module in COMMANDS.items():
        assert f"{command} = {module}:main" in scripts
        out = run(sys.executable, "-m", module, "--version")
        assert out.returncode == 0 and out.stdout == f"{command} {__version__}\n", out.stderr
        assert run(sys.executable, "-m", module, "-h").stdout.startswith("Usage:")
    assert "[default: 127.0.0.1:7222]" in " ".join(run(sys.executable, "-m", COMMANDS["whatsupd"], "-h").stdout.split())
    for tool in ("chaos.py", "fuzz.py"):
        out = run(sys.executable, os.path.join(ROOT, "ops", tool), "-h")
        assert out.returncode == 0 and out.stdout.startswith("Usage:"), out.stderr
    out = run(os.path.join(ROOT, "ops", "deploy.sh"), "-h")
    assert out.returncode == 0 and out.stdout.startswith("usage:")


def checkout(tmp_path):
    """The launchers and the package, copied where no .venv is."""
    root = tmp_path / "checkout"
    for part in ("bin", "whatsup"):
        shutil.copytree(os.path.join(ROOT, part), root / part, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_a_launcher_without_the_dependencies_says_what_to_do_in_one_line(tmp_path):
    out = run(sys.executable, "-S", str(checkout(tmp_path) / "bin" / "whatsup"), "--help")  # -S: no site-packages
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "python3 -m venv .venv && .venv/bin/python -m pip install -e ." in out.stderr


def test_a_launcher_finds_the_projects_venv(tmp_path):
    root = checkout(tmp_path)
    venv = root / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site_dir = next(venv.glob("lib/python*/site-packages"))  # the .venv gets this Python's packages
    (site_dir / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    out = run(sys.executable, "-S", str(root / "bin" / "whatsupd"), "--version")
    assert out.returncode == 0 and out.stdout == f"whatsupd {__version__}\n", out.stderr


def test_a_log_level_outside_the_choices_is_one_line(tmp_path):
    cfg = tmp_path / "verbose.toml"
    cfg.write_text('[server]\nlog_level = "verbose"\n')
    out = run(sys.executable, "-m", "whatsup.cli.whatsupd", "--config", str(cfg))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip() == (f"Error: {cfg}: server.log_level must be one of debug, info, warning, "
                                  "error, got 'verbose'")


@pytest.mark.parametrize("listen, warned", [("0.0.0.0:7222", True), ("[::]:7222", True),
                                            ("example.org:7222", True), ("127.0.0.1:7222", False),
                                            ("[::1]:7222", False)])
def test_plain_tcp_off_loopback_is_warned_about_in_one_line(caplog, listen, warned):
    with caplog.at_level(logging.WARNING):
        warn_plaintext(config.load(overrides={"server.listen": listen}))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == warned
    if warned:
        assert "plain TCP" in lines[0] and "tls.listen" in lines[0] and "\n" not in lines[0]


class FakeTerminal(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_is_a_bar_on_a_terminal_and_a_line_now_and_then_elsewhere():
    term = FakeTerminal(True)
    bar = Progress(term)
    bar.step("offd: reading shards", 1, 4)
    bar.step("offd: reading shards", 4, 4)
    bar.close()
    assert term.getvalue().count("\r") == 2 and "100% offd: reading shards" in term.getvalue()
    assert term.getvalue().endswith("\n") and term.getvalue().count("\n") == 1
    now = [0.0]
    log = FakeTerminal(False)
    lines = Progress(log, every=5.0, clock=lambda: now[0])
    for done in range(1, 11):
        lines.step("moving", done, 10)
        now[0] += 1.0
    assert log.getvalue().splitlines() == ["moving: 1/10 (10%)", "moving: 6/10 (60%)", "moving: 10/10 (100%)"]
