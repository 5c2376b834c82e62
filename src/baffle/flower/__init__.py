"""baffle as a Flower app: ServerApp + Message-API strategy, ClientApp, SecAgg+ on the K scalars.

The math stays in ``baffle.server.strategy.ServerStrategy`` (server) and ``baffle.client.Client`` (node):
this package only moves the same plans and uploads through Flower's records. Import Flower lazily:
``baffle`` itself does not depend on ``flwr`` (it is the optional ``flower`` extra).
"""
