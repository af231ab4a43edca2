"""What the ``bin/`` scripts run: the command from this checkout, in the project's ``.venv`` when
the Python that started the script lacks whatsup's dependencies.

Standard library only: it runs before anyone knows whether msgpack or gevent are importable.
"""
import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
SETUP = "python3 -m venv .venv && .venv/bin/python -m pip install -e ."


def run(module):
    """Import ``module`` and call its ``main``; without the dependencies, re-run the script with
    the project's .venv, or say in one line how to make one (instead of ModuleNotFoundError)."""
    try:
        main = importlib.import_module(module).main
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "whatsup":
            raise
        if os.path.exists(VENV_PYTHON) and os.path.realpath(sys.prefix) != os.path.realpath(
                os.path.join(ROOT, ".venv")):
            os.execv(VENV_PYTHON, [VENV_PYTHON, *sys.argv])
        sys.exit(f"{os.path.basename(sys.argv[0])}: {sys.executable} lacks whatsup's dependencies "
                 f"(no module {exc.name!r}); in {ROOT} run: {SETUP}")
    main()
