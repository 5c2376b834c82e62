"""The in-process simulator behind ``baffle run``: one factory, client sampling, faults and attacks, the loop.

The Flower app builds its server and nodes through the same factory (``baffle.sim.factory``) and samples
through the same function (``baffle.sim.sampling``), which is why the two reproduce each other bit for bit.
"""
