"""Settings: secrets come from the environment only (invariant 6); the contract's horizon is set here."""

from __future__ import annotations

import pytest
import yaml

from invsync_pipeline.settings import ConfigError, load_settings


def _config(tmp_path, monkeypatch, **content) -> None:
    path = tmp_path / "invsync.yaml"
    path.write_text(yaml.safe_dump(content))
    monkeypatch.setenv("INVSYNC_CONFIG", str(path))
    for name in ("INVSYNC_MES_TOKEN", "INVSYNC_AMQP_URL", "INVSYNC_ERP_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        pytest.param({"mes_token": "s3cret"}, "INVSYNC_MES_TOKEN", id="mes_token"),
        pytest.param({"amqp_url": "amqp://invsync:s3cret@broker:5672/%2F"}, "INVSYNC_AMQP_URL", id="amqp-password"),
        pytest.param({"erp": {"url": "postgresql+psycopg://erp:s3cret@db/erp"}}, "INVSYNC_ERP_URL", id="erp-password"),
    ],
)
def test_a_secret_in_the_config_file_is_refused_saying_which_variable_to_use(tmp_path, monkeypatch, content, says):
    _config(tmp_path, monkeypatch, **content)

    with pytest.raises(ConfigError) as refused:
        load_settings()

    assert says in str(refused.value)
    assert "s3cret" not in str(refused.value)


def test_urls_without_a_password_are_fine_in_the_file_and_secrets_from_the_environment_too(tmp_path, monkeypatch):
    _config(tmp_path, monkeypatch, amqp_url="amqp://invsync@broker:5672/%2F", erp={"url": "sqlite:////tmp/erp.db"})
    monkeypatch.setenv("INVSYNC_MES_TOKEN", "from-the-environment")
    monkeypatch.setenv("INVSYNC_ERP_URL", "postgresql+psycopg://erp:pw@db/erp")

    loaded = load_settings()

    assert loaded.mes_token == "from-the-environment"
    assert loaded.erp_url == "postgresql+psycopg://erp:pw@db/erp"
    assert loaded.amqp_url == "amqp://invsync@broker:5672/%2F"


def test_the_contract_horizon_defaults_and_can_be_configured(tmp_path, monkeypatch):
    _config(tmp_path, monkeypatch)
    assert (load_settings().contract.max_age_days, load_settings().contract.max_future_minutes) == (400, 60)

    _config(tmp_path, monkeypatch, contract={"max_age_days": 30, "max_future_minutes": 5})
    assert load_settings().contract.max_age_days == 30

    _config(tmp_path, monkeypatch, contract={"max_age_days": 0})
    with pytest.raises(ConfigError, match="contract.max_age_days"):
        load_settings()


def test_a_cluster_is_its_nodes_comma_separated_and_gets_quorum_queues(tmp_path, monkeypatch):
    _config(tmp_path, monkeypatch, amqp_url="amqp://b1:5672/%2F, amqp://b2:5672/%2F,amqp://b3:5672/%2F")
    settings = load_settings()
    assert settings.amqp_urls == ["amqp://b1:5672/%2F", "amqp://b2:5672/%2F", "amqp://b3:5672/%2F"]
    assert settings.queue_type == "quorum"  # topology.queue_type: auto
    _config(tmp_path, monkeypatch, amqp_url="amqp://b1:5672/%2F")
    assert load_settings().queue_type == "classic"
    # A password in any of the nodes is still refused in the file.
    _config(tmp_path, monkeypatch, amqp_url="amqp://b1/%2F,amqp://u:s3cret@b2/%2F")
    with pytest.raises(ConfigError, match="INVSYNC_AMQP_URL"):
        load_settings()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        pytest.param("http://b1:5672/", "'http://b1:5672/' is not an AMQP URL", id="scheme"),
        pytest.param("amqp://b1/%2F,", "'' is not an AMQP URL", id="empty-node"),
        pytest.param("amqp://b1/%2F,amqp://b2/plant", "different virtual hosts", id="vhosts"),
    ],
)
def test_a_bad_broker_url_is_refused_naming_it(tmp_path, monkeypatch, url, says):
    _config(tmp_path, monkeypatch)
    monkeypatch.setenv("INVSYNC_AMQP_URL", url)
    with pytest.raises(ConfigError, match=says):
        load_settings()
