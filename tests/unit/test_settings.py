from __future__ import annotations

from pathlib import Path

import pytest

from waypost.errors import InvalidInput
from waypost.settings import load_settings


def test_flags_beat_env_beat_file_beat_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "waypost.yaml"
    cfg.write_text("http: 127.0.0.1:7000\nstore: memory://\nevent_window: 2h\nnode: from-file\n")
    env = {"WAYPOST_HTTP": "127.0.0.1:7100", "WAYPOST_NODE": "from-env"}
    s = load_settings({"http": "127.0.0.1:7200", "node": None}, env=env, config_file=cfg)
    assert s.http == "127.0.0.1:7200"  # flag
    assert s.node == "from-env"  # env over file
    assert s.store == "memory://"  # file
    assert s.event_window == "2h"
    assert s.data_dir == ".waypost"  # default


def test_the_token_is_never_shown() -> None:
    s = load_settings({"token": "s3cret"}, env={})
    assert s.redacted()["token"] == "********"
    assert "s3cret" not in str(s.redacted())


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        ({"http": "nonsense"}, "http"),
        ({"http": "127.0.0.1:99999"}, "http"),
        ({"event_window": "soon"}, "event_window"),
        ({"node": "not_a_label"}, "node"),
    ],
)
def test_bad_settings_are_named(flags: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        load_settings(flags, env={})
    assert exc.value.field == field


def test_a_config_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("- just\n- a list\n")
    with pytest.raises(InvalidInput, match="mapping"):
        load_settings({}, env={}, config_file=cfg)


def test_command_checks_are_off_unless_asked() -> None:
    assert load_settings({}, env={}).enable_command_checks is False
    assert load_settings({}, env={"WAYPOST_ENABLE_COMMAND_CHECKS": "true"}).enable_command_checks
    with pytest.raises(InvalidInput, match="enable_command_checks"):
        load_settings({}, env={"WAYPOST_ENABLE_COMMAND_CHECKS": "maybe"})
