import os
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm_home(tmp_path_factory) -> Path:
    """An EMBRECIPE_HOME holding the 2-layer SmolLM2 slice, built once per session (~30 s).

    A verified copy in the user's cache is copied instead of converting again (the copy keeps tests from ever
    modifying the user's cache). EMBRECIPE_TEST_FRESH=1 forces a real conversion.
    """
    pytest.importorskip("gguf")
    from embrecipe.testbed.models import ensure_model, member_name, testbed_home, verify

    home = tmp_path_factory.mktemp("embrecipe-home")
    cached = testbed_home(None) / member_name(2)
    if os.environ.get("EMBRECIPE_TEST_FRESH") != "1" and verify(cached, 2):
        shutil.copytree(cached, testbed_home(home) / member_name(2))
    ensure_model(2, home)
    return home


@pytest.fixture(scope="session")
def smollm_l2(smollm_home) -> Path:
    from embrecipe.testbed.models import member_name, testbed_home

    return testbed_home(smollm_home) / member_name(2)

