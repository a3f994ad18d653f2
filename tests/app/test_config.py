from pathlib import Path

import pytest

from radtriage.app.config import load_settings


def test_environment_overrides_file_and_file_overrides_defaults(tmp_path: Path) -> None:
    config = tmp_path / "radtriage.toml"
    config.write_text('[radtriage]\ndatabase_url = "sqlite:///from-file"\nworkers = 3\nport = 9000\n')
    settings = load_settings(config, env={"RADTRIAGE_PORT": "9100", "RADTRIAGE_DICOMWEB_TIMEOUT": "2.5"})
    assert settings.database_url == "sqlite:///from-file"
    assert settings.workers == 3
    assert settings.port == 9100
    assert settings.dicomweb_timeout == 2.5


def test_unknown_setting_in_file_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "radtriage.toml"
    config.write_text('[radtriage]\ndatabse_url = "typo"\n')
    with pytest.raises(ValueError, match="databse_url"):
        load_settings(config, env={})


def test_default_database_is_sqlite_under_home(tmp_path: Path) -> None:
    settings = load_settings(env={"RADTRIAGE_HOME": str(tmp_path)}, home=str(tmp_path))
    assert settings.resolved_database_url() == f"sqlite:///{tmp_path / 'radtriage.sqlite3'}"
