"""Profile history: traits by event time, first/last seen, counts, and the fold of several subjects."""

from __future__ import annotations

from datetime import timedelta

from services.identity.domain.history import History, fold
from tests.unit.identity.helpers import T0


def test_traits_are_last_write_wins_by_event_time_not_arrival() -> None:
    history = History()
    history.record("identify", T0 + timedelta(days=1), "web", None, {"plan": "pro"})
    history.record("identify", T0, "ios", None, {"plan": "free", "city": "Lyon"})  # arrives later, is older
    assert fold([history]).traits == {"plan": "pro", "city": "Lyon"}
    assert history.first_seen == T0 and history.last_seen == T0 + timedelta(days=1)


def test_fold_merges_subjects_histories() -> None:
    anonymous, known = History(), History()
    anonymous.record("track", T0, "web", "Viewed", {})
    anonymous.record("identify", T0 + timedelta(minutes=1), "web", None, {"name": "J", "plan": "free"})
    known.record("identify", T0 + timedelta(minutes=5), "ios", None, {"plan": "pro"})
    view = fold([known, anonymous])
    assert view.traits == {"name": "J", "plan": "pro"}
    assert view.first_seen == T0 and view.last_seen == T0 + timedelta(minutes=5)
    assert view.counts == {"identify": 2, "track": 1}
    assert view.events == {"Viewed": 1}
    assert view.sources == {"web": 2, "ios": 1}


def test_equal_event_times_fold_the_same_in_any_order() -> None:
    one, two = History(), History()
    one.record("identify", T0, "web", None, {"plan": "a"})
    two.record("identify", T0, "web", None, {"plan": "b"})
    assert fold([one, two]).traits == fold([two, one]).traits
