"""The owner's store without a network: lookup by name, tag, position and id prefix; remove; pandas."""

from __future__ import annotations

import pytest
import torch

from duet.remote.store import Store

COLUMNS = ["id", "name", "tags", "description", "type", "shape", "dtype", "size_bytes"]


@pytest.fixture
def store() -> Store:
    s = Store()
    s.publish(torch.arange(6.0), name="ages", tags=["#ages", "#ward3"], description="six ages")
    s.publish(torch.tensor([1, 0, 1]), name="labels", tags=["#labels", "#ward3"])
    s.publish("Nord-7", name="ward", tags=["#text"])
    return s


def ids(store: Store) -> list[str]:
    return [e.id for e in store]


def test_lookup_by_name_tag_position_and_prefix(store: Store) -> None:
    first, second, third = ids(store)
    assert torch.equal(store["ages"], torch.arange(6.0))
    assert store["#labels"].tolist() == [1, 0, 1]  # a tag only one object carries
    assert torch.equal(store[0], torch.arange(6.0))
    assert store[-1] == "Nord-7"
    assert store[1].tolist() == [1, 0, 1]
    assert store.entry(-1).id == third and store.entry(0).id == first
    assert store[second[:6]].tolist() == [1, 0, 1]  # an id prefix of 6 characters
    assert store.entry(third[:6]).name == "ward"
    assert store.entry(first).name == "ages"  # the whole id is a prefix too


def test_short_prefixes_unknown_keys_and_positions_are_key_errors(store: Store) -> None:
    first = ids(store)[0]
    with pytest.raises(KeyError, match="no published object"):
        store[first[:5]]  # 5 characters are not enough
    with pytest.raises(KeyError, match="no published object"):
        store["nope"]
    with pytest.raises(KeyError, match="position 3"):
        store[3]
    with pytest.raises(KeyError, match="position -4"):
        store[-4]


def test_a_shared_tag_is_ambiguous(store: Store) -> None:
    with pytest.raises(KeyError, match="'#ward3' matches 2 objects"):
        store["#ward3"]
    with pytest.raises(KeyError, match="matches 2 objects"):
        store.remove("#ward3")  # an ambiguous key removes nothing
    assert len(store) == 3


def test_remove_by_name_position_and_prefix(store: Store) -> None:
    first, second, third = ids(store)
    store.publish(torch.ones(2), name="extra")
    store.remove("labels")  # by name
    assert ids(store) == [first, third, store.entry("extra").id]
    with pytest.raises(KeyError):
        store["labels"]
    store.remove(-1)  # by position: "extra"
    assert ids(store) == [first, third]
    store.remove(third[:6])  # by id prefix
    assert ids(store) == [first]
    with pytest.raises(KeyError):
        store.entry(third[:6])
    assert not store.holds(second) and not store.holds(third) and store.holds(first)
    with pytest.raises(KeyError):
        store.remove("ward")  # already gone
    assert len(store) == 1 and store[0] is store["ages"]


def test_pandas_columns_and_rows(store: Store) -> None:
    df = store.pandas
    assert list(df.columns) == COLUMNS
    assert list(df["id"]) == ids(store)
    assert list(df["name"]) == ["ages", "labels", "ward"]
    assert df.loc[0, "tags"] == ["#ages", "#ward3"] and df.loc[0, "description"] == "six ages"
    assert list(df["type"]) == ["Tensor", "Tensor", "str"]
    assert df.loc[0, "shape"] == [6] and df.loc[1, "dtype"] == "int64"
    assert list(df["size_bytes"]) == [24, 24, 6]
    store.remove("ward")
    assert list(store.pandas["name"]) == ["ages", "labels"]
    empty = Store().pandas
    assert list(empty.columns) == COLUMNS and len(empty) == 0


def test_published_objects_is_one_list_until_the_published_set_changes() -> None:
    """The executor's read-only check reuses what it found in the list published_objects gives: the list
    must be a new one whenever something is published or removed."""
    from duet.errors import PermissionDenied
    from duet.remote import readonly
    from duet.remote.allowlist import DEFAULT_ALLOWLIST

    store = Store()
    a, b = torch.zeros(3), torch.ones(3)
    store.publish(a, name="a")
    first = store.published_objects()
    assert first is store.published_objects() and len(first) == 1 and first[0] is a

    def change(t: torch.Tensor) -> bool:
        return readonly.refuse_published_change(
            DEFAULT_ALLOWLIST, store.published_objects, obj=t, name="add_", args=[1]
        )

    assert change(torch.zeros(2)) is True  # a change, to nothing published: allowed (and its ids seen)
    with pytest.raises(PermissionDenied):
        change(a)
    store.publish(b, name="b")
    assert store.published_objects() is not first and len(store.published_objects()) == 2
    with pytest.raises(PermissionDenied):
        change(b)  # published after the check last looked: refused all the same
    store.remove("a")
    assert all(o is not a for o in store.published_objects())
    assert change(a) is True  # no longer published: the scientist may not reach it, the check lets it be
