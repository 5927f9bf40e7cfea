"""What every classmesh service shares, and nothing more.

ids, regions.yaml loading, config, wire messages, the bus (one Protocol with an in-process and a Redis
implementation), join tokens and the service runner. Every package may import core; core imports none of them.
"""
