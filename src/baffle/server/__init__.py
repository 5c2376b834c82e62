"""The server side of a round: validation, aggregation, the optimizer step and the single round ingest.

Nothing here knows how messages travel or who runs the clients: the in-process simulator (``baffle.sim``),
the Flower app (``baffle.flower``) and the benchmarks all feed uploads to ``baffle.server.ingest``.
"""
