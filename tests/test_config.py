"""The one settings table (whatsup/config.py): typed sections, and the file, the environment and
``--set`` all generated from it; a misspelt name is refused in one line naming the nearest."""
import dataclasses

import pytest

from whatsup import config
from whatsup.config import ConfigError


def refusal(**sources):
    with pytest.raises(ConfigError) as exc:
        config.load(**sources)
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_every_setting_is_a_typed_frozen_attribute_of_its_section():
    cfg = config.load()
    for s in config.SETTINGS:
        section, key = s.name.split(".", 1)
        assert getattr(getattr(cfg, section), key) == s.default
        assert {f.name: f.type for f in dataclasses.fields(getattr(cfg, section))}[key] is s.type
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.session.window = 1
    with pytest.raises(AttributeError):
        cfg.session.windw


def test_every_setting_can_be_given_in_the_environment_and_with_set():
    for s in config.SETTINGS:
        text = str(s.default).lower() if s.type is bool else str(s.default)
        for sources in ({"env": {config.env_name(s.name): text}}, {"sets": [f"{s.name}={text}"]}):
            assert config.load(**sources).as_dict()[s.name] == s.default, (s.name, sources)
    assert config.env_name("server.data_dir") == "WHATSUP_SERVER__DATA_DIR"


def test_set_beats_the_environment_which_beats_the_file(tmp_path):
    path = tmp_path / "whatsupd.toml"
    path.write_text("[session]\nwindow = 10\nrate_burst = 2\n\n[push]\ninclude_content = false\n")
    env = {"WHATSUP_SESSION__WINDOW": "20", "WHATSUP_PUSH__INCLUDE_CONTENT": "yes",
           "WHATSUP_SERVER": "the client's variable, not a setting"}
    cfg = config.load(str(path), env=env)
    assert (cfg.session.window, cfg.session.rate_burst, cfg.push.include_content) == (20, 2.0, True)
    assert config.load(str(path), env=env, sets=["session.window=30"]).session.window == 30


@pytest.mark.parametrize("source, where", [
    ({"env": {"WHATSUP_SESION__WINDOW": "3"}}, "environment WHATSUP_SESION__WINDOW"),
    ({"sets": ["sesion.window=3"]}, "--set sesion.window=3"),
])
def test_a_misspelt_setting_is_refused_naming_the_nearest(source, where):
    assert refusal(**source) == f"{where}: unknown setting 'sesion.window'; did you mean session.window?"


def test_a_setting_variable_one_underscore_short_is_refused_not_ignored():
    assert refusal(env={"WHATSUP_SESSION_MAX_INFLIGHT": "3"}) == (
        "environment WHATSUP_SESSION_MAX_INFLIGHT: not a setting (one underscore); "
        "did you mean WHATSUP_SESSION__MAX_INFLIGHT?")
    assert config.load(env={"WHATSUP_SERVER": "127.0.0.1:1", "WHATSUP_PASSWORD": "x"}).session.window  # the client's


def test_a_setting_outside_any_section_in_the_file_is_refused_naming_the_nearest(tmp_path):
    path = tmp_path / "whatsupd.toml"
    path.write_text("max_inflight = 5\n")
    assert refusal(path=str(path)) == (f"{path}: top-level key 'max_inflight' must be in a [section]; "
                                       f"did you mean session.max_inflight?")


def test_a_misspelt_setting_in_the_file_is_refused_naming_the_nearest(tmp_path):
    path = tmp_path / "whatsupd.toml"
    path.write_text("[offd]\nmax_queu = 5\n")
    assert refusal(path=str(path)) == f"{path}: unknown setting 'offd.max_queu'; did you mean offd.max_queue?"


@pytest.mark.parametrize("item, error", [
    ("session.window=many", "session.window must be int, got 'many'"),
    ("session.window=0", "session.window must be at least 1, got 0"),
    ("push.include_content=maybe", "push.include_content must be bool, got 'maybe'"),
    ("server.log_level=loud", "server.log_level must be one of debug, info, warning, error, got 'loud'"),
    ("session.window", "expected section.key=value"),
])
def test_a_value_from_text_is_checked_like_one_from_the_file(item, error):
    assert refusal(sets=[item]) == f"--set {item}: {error}"
