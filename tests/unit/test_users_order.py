"""Ties in /api/analytics/users: integer ids in numeric order, then the others as text."""

from __future__ import annotations

from loader.analytics import brute
from loader.analytics.common import users_answer


def test_integer_ids_tie_in_numeric_order_then_text() -> None:
    # An audit: users 10, 9 and 2 came back as "10", "2", "9".
    ids = ["10", "9", "2", "100", "1", "-3", "0", "b", "A", "07", "-0", "2.5", "1e3"]
    answer = users_answer([(u, 1) for u in ids], top=20)
    assert [r["user_id"] for r in answer["users"]] == [
        "-3", "0", "1", "2", "9", "10", "100", "-0", "07", "1e3", "2.5", "A", "b"]
    # `top` cuts a tie where a reader expects.
    assert [r["user_id"] for r in users_answer([(u, 1) for u in ids], top=3)["users"]] == [
        "-3", "0", "1"]
    # More events first, whatever the id.
    assert users_answer([("2", 1), ("10", 2)], top=5)["users"][0]["user_id"] == "10"


def test_the_reference_orders_ties_the_same_way() -> None:
    ids = [10, 9, 2, "b", "A", 100, "07"]
    events = [{"id": str(i), "event_type": "e", "ts": 100.0 + i, "params": {"user_id": u}}
              for i, u in enumerate(ids)]
    assert brute.users(events, 0, 1000, 10) == users_answer(
        [(str(u), 1) for u in ids], top=10)


def test_any_number_of_digits_is_ordered_without_int() -> None:
    # A review: int() refuses more than 4300 digits, and the endpoint answered 500.
    big, bigger = "9" * 5000, "1" + "0" * 5000
    ids = [bigger, "-" + bigger, big, "-" + big, "-12", "-9", "7"]
    answer = users_answer([(u, 1) for u in ids], top=10)
    assert [r["user_id"] for r in answer["users"]] == [
        "-" + bigger, "-" + big, "-12", "-9", "7", big, bigger]
    events = [{"id": str(i), "event_type": "e", "ts": 100.0 + i, "params": {"user_id": u}}
              for i, u in enumerate(ids)]
    assert brute.users(events, 0, 1000, 10) == answer
