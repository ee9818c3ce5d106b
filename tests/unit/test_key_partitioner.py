"""The Publisher's partitioner picks the partition the default (Java client's) one picks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner import DefaultPartitioner

from crm_ledger.adapters.kafka.publisher import KeyPartitioner


class Cluster:
    """The two metadata calls a partitioner makes, for one topic of ``partitions``."""

    def __init__(self, partitions: set[int]) -> None:
        self.partitions = partitions

    def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(self.partitions) if topic == "t" else None

    def available_partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions_for_topic(topic)


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(st.binary(max_size=40), min_size=1, max_size=30),
    counts=st.lists(st.integers(1, 64), min_size=1, max_size=3),
    remembered=st.integers(1, 8),
)
def test_every_key_goes_where_the_default_partitioner_sends_it(
    keys: list[bytes], counts: list[int], remembered: int
) -> None:
    ours, default = KeyPartitioner(remembered), DefaultPartitioner()
    for count in counts:  # partitions added to the topic between sends
        cluster = Cluster(set(range(count)))
        for key in keys + keys:  # each key again, now remembered (or forgotten)
            expected = default.partition("t", key, key, None, None, cluster)
            assert ours.partition("t", key, key, None, None, cluster) == expected


def test_a_record_without_a_key_or_topic_is_left_to_the_default() -> None:
    ours = KeyPartitioner()
    assert ours.partition("t", None, None, None, None, Cluster({0, 1, 2})) in {0, 1, 2}
    with pytest.raises(ValueError, match="other"):
        ours.partition("other", b"k", b"k", None, None, Cluster({0}))
