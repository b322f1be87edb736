"""Stand-ins for services that cannot run here, used by the tests and the benchmarks only.

Not part of the installed package: the product never talks to a fake.
"""
