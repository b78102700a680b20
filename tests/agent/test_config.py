from pathlib import Path

import pytest

from netevents.agent.compose import build_collectors
from netevents.agent.config import load_file
from netevents.errors import ConfigError

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "agent.toml"


def test_the_shipped_sample_config_loads_and_builds():
    cfg = load_file(DEPLOY).validate()
    assert cfg.site == "local" and "netstat" in cfg.sources
    assert [c.name for c in build_collectors(cfg)] == ["netstat"]


@pytest.mark.parametrize("text, words", [
    ("[agent]\nsite = 'a.b'\n", "invalid site 'a.b'"),
    ("[agent]\nstatus_interval = 'often'\n", "[agent] status_interval: expected"),
    ("[agent]\nbatch_max_wait = 2.0\n", "batch_max_wait must be in (0, 0.25]"),
    ("[nosuch]\n", "unknown section [nosuch]"),
    ("[agent\n", "not valid TOML"),
])
def test_wrong_configs_name_the_problem(tmp_path, text, words):
    p = tmp_path / "agent.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_file(p).validate()
    assert words in str(info.value)


def test_a_disabled_section_is_not_run(tmp_path):
    p = tmp_path / "agent.toml"
    p.write_text("[netstat]\nenabled = false\n")
    assert load_file(p).sources == {}
