"""Generated docs stay in step with the code."""

from areal_lite.config import docs


def test_config_md_is_up_to_date():
    assert docs.main(["--check"]) == 0, "docs/config.md is stale: run python -m areal_lite.config.docs"
