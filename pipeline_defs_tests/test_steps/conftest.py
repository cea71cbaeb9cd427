"""DataFrames the step tests share."""
from __future__ import annotations

import pytest


@pytest.fixture
def people(spark):
    return spark.createDataFrame(
        [
            (1, "ann", 34, "DE", True),
            (2, "bob", 17, "FR", True),
            (3, "cid", 52, "DE", False),
            (4, "dan", None, "NL", True),
        ],
        "id long, name string, age int, country string, active boolean",
    )


@pytest.fixture
def orders(spark):
    return spark.createDataFrame(
        [(10, 1, 20.0, "books"), (11, 1, 5.5, "toys"), (12, 3, 7.0, "books"), (13, 9, 1.0, "toys")],
        "order_id long, user_id long, amount double, category string",
    )


@pytest.fixture
def yearly(spark):
    """People with a year column (for partitioned writes)."""
    return spark.createDataFrame(
        [(1, "ann", 2024), (2, "bob", 2025), (3, "cid", 2025)], "id long, name string, year int"
    )
