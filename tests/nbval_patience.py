"""A pytest plugin for the nbval run of test_notebooks: nbval waits a fixed 5 s for a
cell's output messages once the cell has run, which a loaded 2-core machine can exceed
(a CI run failed 08_ablations that way, the cell itself fine); this gives it 60 s."""

import pytest

OUTPUT_TIMEOUT_S = 60


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if hasattr(item, "output_timeout"):
            item.output_timeout = OUTPUT_TIMEOUT_S
