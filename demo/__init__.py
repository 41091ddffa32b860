"""The demo, the toy world and the tiny model: `reasonflux demo`, `reasonflux loop toy-world`, `reasonflux dev
tiny-model`, the play-along model (the `scripted` spec without rules), and the scratch databases the tests and
benchmarks use. Not part of the product: no module in kb/, pipelines/, serve/ or migrations/ imports it
(tests/test_layering.py); its commands and backends plug in through entry points (pyproject.toml)."""
