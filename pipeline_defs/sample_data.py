"""Deterministic sample data for the example pipelines in configs/ (no Spark needed).

    python -m pipeline_defs.sample_data DIR
"""
from __future__ import annotations

import csv
import json
import math
import random
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

COUNTRIES = ["DE", "FR", "NL", "ES", "IT", "PL"]
SEGMENTS = ["consumer", "business", "enterprise"]
CATEGORIES = ["books", "electronics", "garden", "toys"]
REGIONS = ["north", "south", "east", "west"]
STATUSES = ["completed", "completed", "completed", "pending", "cancelled", "refunded"]


def customers(rng: random.Random, n: int) -> list[dict]:
    start = date(2022, 1, 1)
    return [{"customer_id": i, "name": f"Customer {i:04d}", "email": f"c{i}@example.com",
             "country": rng.choice(COUNTRIES), "segment": rng.choice(SEGMENTS),
             "signup_date": (start + timedelta(days=rng.randrange(900))).isoformat()}
            for i in range(1, n + 1)]


def orders(rng: random.Random, first_id: int, n: int, year: int, n_customers: int
           ) -> list[dict]:
    out = []
    for i in range(first_id, first_id + n):
        day = date(year, 1, 1) + timedelta(days=rng.randrange(365))
        out.append({"order_id": i, "customer_id": rng.randint(1, n_customers),
                    "order_date": day.isoformat(), "status": rng.choice(STATUSES),
                    "product_category": rng.choice(CATEGORIES), "region": rng.choice(REGIONS),
                    "quantity": rng.randint(1, 5),
                    # money: written with two decimals, read as DECIMAL(10,2) by the examples
                    "amount": round(rng.uniform(5, 500), 2)})
    return out


def with_defects(rows: list[dict]) -> list[dict]:
    """A few broken orders, as real feeds have: no customer, a negative amount, an unknown
    status (for the data-quality example)."""
    for i, r in enumerate(rows):
        if i % 89 == 5:
            r["customer_id"] = None
        if i % 97 == 7:
            r["amount"] = -r["amount"]
        if i % 83 == 11:
            r["status"] = "lost"
    return rows


def customer_updates(rng: random.Random, n_customers: int, n: int) -> list[dict]:
    base = datetime(2025, 3, 1, 8, 0, 0)
    out = []
    for k in range(n):
        cid = rng.randint(1, n_customers + 20)  # some are new customers
        out.append({"customer_id": cid, "name": f"Customer {cid:04d}",
                    "email": f"c{cid}.v{k}@example.com", "country": rng.choice(COUNTRIES),
                    "segment": rng.choice(SEGMENTS),
                    "updated_at": (base + timedelta(minutes=7 * k)).isoformat(sep=" ")})
    return out


PLANS = ["basic", "family", "premium"]


def subscriptions(rng: random.Random, first_id: int, n: int, labelled: bool = True
                  ) -> list[dict]:
    """Subscribers of a streaming service; whether they left (`churned`, for the ML
    example) follows their tenure, plan, support calls and usage, with noise: a model can
    learn it, not perfectly."""
    out = []
    for i in range(first_id, first_id + n):
        plan = rng.choice(PLANS)
        tenure = rng.randint(1, 72)
        calls = min(int(rng.expovariate(0.7)), 9)
        hours = round(rng.gammavariate(2.0, 9.0), 1)
        row = {"subscriber_id": i, "plan": plan, "tenure_months": tenure,
               "monthly_fee": {"basic": 7.99, "family": 13.99, "premium": 19.99}[plan],
               "support_calls": calls, "hours_watched": hours,
               "country": rng.choice(COUNTRIES)}
        if labelled:
            risk = 0.8 - tenure / 20 + 0.6 * calls - hours / 25 + (plan == "basic") * 0.9
            row["churned"] = int(rng.random() < 1 / (1 + math.exp(-risk)))
        out.append(row)
    return out


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def generate(out: Path, n_customers: int = 200, n_orders: int = 1500, seed: int = 7) -> None:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "orders").mkdir(exist_ok=True)
    write_csv(out / "customers.csv", customers(rng, n_customers))
    write_jsonl(out / "orders" / "orders_2024.jsonl", orders(rng, 1, n_orders, 2024, n_customers))
    (out / "orders_2025").mkdir(exist_ok=True)
    write_jsonl(out / "orders_2025" / "orders_2025.jsonl",
                with_defects(orders(rng, n_orders + 1, n_orders, 2025, n_customers)))
    write_csv(out / "customer_updates.csv", customer_updates(rng, n_customers, 120))
    write_csv(out / "subscriptions.csv", subscriptions(rng, 1, 3000))
    write_csv(out / "subscriptions_new.csv", subscriptions(rng, 3001, 500, labelled=False))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m pipeline_defs.sample_data DIR")
    generate(Path(sys.argv[1]))
    print(f"sample data written to {sys.argv[1]}")
