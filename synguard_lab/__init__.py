"""synguard's lab, load generators, demo, evaluation, benchmarks and the fuzz model.

Not part of what a server installs (pyproject installs only the `synguard`
package): these run from a checkout, as root, in network namespaces they create
(`make demo`, `make bench`, `python -m synguard_lab.evaluate`, the tests).
"""
