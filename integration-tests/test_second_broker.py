"""The spine's SDK and tail-sampling tests against a second Kafka-compatible broker, noida-db
(installed from PyPI), written apart from Tansu: the gateway, the tail router and the
independent consumer must not depend on one broker's quirks (issue 20, item 7).

The tests are the same functions as in test_sdk_export.py and test_tail_sampling.py; this
module only puts a noida-db broker under them by overriding the `broker` fixture.
"""

from __future__ import annotations

import pytest

from harness import NoidaBroker

# The tests run here again, on the broker below.
from test_sdk_export import test_sdk_logs, test_sdk_metrics, test_sdk_traces  # noqa: F401
from test_decision_format import test_marked_traces_have_their_bits_in_the_gateways_records  # noqa: F401
from test_tail_sampling import (  # noqa: F401
    tail,
    test_a_span_arriving_after_the_delay_stays_hot,
)

# Not here: the router-kill test. noida-db 0.2.3 never hands a dead consumer's partitions to
# a router that joins after it (not even once its session expired), so the replacement router
# waits forever; a Kafka broker rebalances. The other tail tests use one router.


@pytest.fixture(scope="module")
def broker(workdir):
    """A noida-db broker (Kafka only) shared by this module's tests."""
    b = NoidaBroker(workdir, "noida-module").start()
    yield b
    b.stop()
