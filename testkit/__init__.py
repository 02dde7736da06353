"""Test support shared by the test suite and the benchmarks, outside the service packages:
the fake aggregator (``testkit.fake_aggregator``) every test and benchmark plays instead of a
real one, building its messages from core/messages.py's declarations; ``testkit.ports.free_port``
for the servers they start."""
