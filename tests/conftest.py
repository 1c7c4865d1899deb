"""Test configuration: make tests/ importable for shared fixtures and keep runs offline."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def generated_data(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """Generated copies of the paper tasks' data (MTV_DATA_DIR) with the test module's
    small budgets (its `BUDGETS`, exported as MTV_EVAL_BUDGETS) for the module's tests."""
    import fixtures_data

    root = fixtures_data.write_all(tmp_path_factory.mktemp("data"))
    patch = pytest.MonkeyPatch()
    patch.setenv("MTV_DATA_DIR", str(root))
    patch.setenv("MTV_EVAL_BUDGETS", request.module.BUDGETS)
    yield root
    patch.undo()
