"""Strict configs and bundled config lookup."""

import pytest

from hloc_hndesc.config import ConfigError, merge_conf
from hloc_hndesc.configs import config_path, list_configs


def test_merge_overrides_and_keeps_defaults():
    conf = merge_conf({"a": 1, "b": {"c": 2}}, {"b": {"c": 3}}, "X")
    assert conf.a == 1 and conf.b.c == 3


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match=r"X: unknown config key 'max_keypionts'"):
        merge_conf({"max_keypoints": 10}, {"max_keypionts": 5}, "X")


def test_wrong_type_is_refused():
    with pytest.raises(ConfigError, match="X: invalid config"):
        merge_conf({"max_keypoints": 10}, {"max_keypoints": "many"}, "X")


def test_bundled_configs_are_addressable():
    names = list_configs()
    for name in names:
        assert config_path(name).is_file()
    with pytest.raises(FileNotFoundError, match="No bundled config 'nope'"):
        config_path("nope")
