"""Settings: TOML file, environment overrides, validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from coffre.errors import ConfigurationError
from coffre.settings import (
    DEFAULT_TOML,
    SETTINGS_FILE,
    ArchiveSettings,
    DicomSettings,
    LimitsSettings,
    Settings,
    StorageSettings,
    load_settings,
)


def write(data_dir: Path, text: str) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / SETTINGS_FILE).write_text(text, encoding="utf-8")
    return data_dir


def test_defaults_when_no_file(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, {})
    assert settings == Settings(data_dir=tmp_path.resolve())
    assert settings.dicom.port == 11112
    assert settings.storage.fsync is True
    assert settings.archive.ae_title == "COFFRE"


def test_environ_none_means_no_overrides(tmp_path: Path) -> None:
    assert load_settings(tmp_path) == Settings(data_dir=tmp_path.resolve())


def test_default_toml_gives_exactly_the_defaults(tmp_path: Path) -> None:
    write(tmp_path, DEFAULT_TOML)
    assert load_settings(tmp_path, {}) == Settings(data_dir=tmp_path.resolve())


def test_default_toml_names_every_setting() -> None:
    import tomllib

    document = tomllib.loads(DEFAULT_TOML)
    defaults = Settings(data_dir=Path("/x"))
    for section_field in dataclasses.fields(defaults):
        if section_field.name == "data_dir":
            continue
        section = getattr(defaults, section_field.name)
        names = {f.name for f in dataclasses.fields(section)}
        assert set(document[section_field.name]) == names, section_field.name


def test_file_values_applied(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
[archive]
ae_title = "TERRITOIRE"
[dicom]
port = 104
network_timeout = 5
verify_peer_host = false
[http]
host = "0.0.0.0"
[index]
url = "postgresql+psycopg://coffre@db/coffre"
[storage]
path = "/srv/blobs"
fsync = false
[limits]
max_sequence_depth = 8
""",
    )
    settings = load_settings(tmp_path, {})
    assert settings.archive.ae_title == "TERRITOIRE"
    assert settings.dicom.port == 104
    assert settings.dicom.network_timeout == 5.0
    assert isinstance(settings.dicom.network_timeout, float)
    assert settings.dicom.verify_peer_host is False
    assert settings.http.host == "0.0.0.0"
    assert settings.index_url == "postgresql+psycopg://coffre@db/coffre"
    assert settings.blob_path == Path("/srv/blobs")
    assert settings.storage.fsync is False
    assert settings.limits.max_sequence_depth == 8
    # untouched keys keep their defaults
    assert settings.dicom.host == DicomSettings().host
    assert settings.limits.max_object_bytes == LimitsSettings().max_object_bytes


def test_env_overrides_file(tmp_path: Path) -> None:
    write(tmp_path, '[dicom]\nport = 104\n[archive]\nae_title = "FROMFILE"\n')
    settings = load_settings(
        tmp_path,
        {"COFFRE_DICOM_PORT": "11113", "COFFRE_ARCHIVE_AE_TITLE": "FROMENV", "PATH": "/bin"},
    )
    assert settings.dicom.port == 11113
    assert settings.archive.ae_title == "FROMENV"


def test_env_key_with_underscores(tmp_path: Path) -> None:
    settings = load_settings(
        tmp_path,
        {
            "COFFRE_INDEX_SQLITE_BUSY_TIMEOUT_MS": "5000",
            "COFFRE_LIMITS_BULK_DATA_THRESHOLD": "1024",
            "COFFRE_DICOM_MAX_PDU": "16384",
        },
    )
    assert settings.index.sqlite_busy_timeout_ms == 5000
    assert settings.limits.bulk_data_threshold == 1024
    assert settings.dicom.max_pdu == 16384


def test_env_without_prefix_ignored(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, {"DICOM_PORT": "1", "XCOFFRE_DICOM_PORT": "1"})
    assert settings.dicom.port == 11112


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_bool_from_env(tmp_path: Path, raw: str, expected: bool) -> None:
    settings = load_settings(tmp_path, {"COFFRE_STORAGE_FSYNC": raw})
    assert settings.storage.fsync is expected


def test_int_and_float_from_env(tmp_path: Path) -> None:
    settings = load_settings(
        tmp_path, {"COFFRE_HTTP_PORT": "9000", "COFFRE_DICOM_ACSE_TIMEOUT": "2.5"}
    )
    assert settings.http.port == 9000
    assert isinstance(settings.http.port, int)
    assert settings.dicom.acse_timeout == 2.5


@pytest.mark.parametrize(
    "environ",
    [
        {"COFFRE_STORAGE_FSYNC": "maybe"},
        {"COFFRE_STORAGE_FSYNC": ""},
        {"COFFRE_DICOM_PORT": "eleven"},
        {"COFFRE_DICOM_PORT": "104.5"},
        {"COFFRE_DICOM_PORT": ""},
        {"COFFRE_DICOM_NETWORK_TIMEOUT": "soon"},
        {"COFFRE_DICOM_NO_SUCH_KEY": "1"},
    ],
)
def test_bad_env_values(tmp_path: Path, environ: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        load_settings(tmp_path, environ)


@pytest.mark.parametrize(
    "text",
    [
        "[nosuchsection]\nx = 1\n",
        "[dicom]\nno_such_key = 1\n",
        "toplevel = 1\n",
        "[dicom]\nport = [1, 2]\n",
        '[dicom]\nport = "104"x\n',  # not TOML
        "[dicom]\nport = true\n",
        "[dicom]\nport = 104.5\n",
        '[dicom]\nnetwork_timeout = "fast"\n',
        "[dicom]\nnetwork_timeout = true\n",
        "[dicom]\nverify_peer_host = 1.5\n",
        '[dicom]\nverify_peer_host = "perhaps"\n',
        "[archive]\nae_title = 42\n",
        "[index]\nurl = false\n",
        '[storage]\nbackend = "s3"\n',
        "[dicom]\nport = 70000\n",
        "[http]\nport = -1\n",
        "[limits]\nmax_object_bytes = 0\n",
        "[limits]\nmax_sequence_depth = -3\n",
    ],
)
def test_bad_file_values(tmp_path: Path, text: str) -> None:
    write(tmp_path, text)
    with pytest.raises(ConfigurationError):
        load_settings(tmp_path, {})


def test_unreadable_encoding(tmp_path: Path) -> None:
    tmp_path.joinpath(SETTINGS_FILE).write_bytes(b'[archive]\nae_title = "\xff\xfe"\n')
    with pytest.raises(ConfigurationError):
        load_settings(tmp_path, {})


@pytest.mark.parametrize(
    "title",
    ["", "A" * 17, "BACK\\SLASH", " LEADING", "TRAILING ", "ÉCHO"],
)
def test_bad_ae_title(tmp_path: Path, title: str) -> None:
    with pytest.raises(ConfigurationError, match="ae_title"):
        load_settings(tmp_path, {"COFFRE_ARCHIVE_AE_TITLE": title})


@pytest.mark.parametrize("title", ["A", "A" * 16, "CHU_NORD-1", "PACS ONE"])
def test_good_ae_title(tmp_path: Path, title: str) -> None:
    assert load_settings(tmp_path, {"COFFRE_ARCHIVE_AE_TITLE": title}).archive == ArchiveSettings(
        ae_title=title
    )


def test_paths_derived_from_data_dir(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, {})
    data = tmp_path.resolve()
    assert settings.data_dir == data
    assert settings.index_url == f"sqlite:///{data / 'index.sqlite3'}"
    assert settings.blob_path == data / "blobs"
    assert settings.storage == StorageSettings()


def test_data_dir_is_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    settings = load_settings(Path("data"), {})
    assert settings.data_dir.is_absolute()
    assert settings.blob_path == tmp_path.resolve() / "data" / "blobs"


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.dicom = DicomSettings(port=1)  # type: ignore[misc]


def test_every_setting_is_documented_and_in_the_default_file() -> None:
    """docs/configuration.md and DEFAULT_TOML name every key of every section."""
    import dataclasses
    from pathlib import Path

    from coffre import settings

    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [
        f"[{section}] {field.name}"
        for section, cls in settings._SECTIONS.items()
        for field in dataclasses.fields(cls)
        if f"`{field.name}`" not in doc or f"\n{field.name} = " not in settings.DEFAULT_TOML
    ]
    assert missing == []
