"""The Flower ClientApp: ``baffle.client.Client.step`` (forward passes only) behind Flower messages.

* ``query``: the node tells the server which partition it holds (``partition-id``, ``num-partitions``)
  and its sample count, so the server samples the same clients ``baffle run`` would, and which baffle and
  noise spec it runs (``baffle.flower.versions``), so the server can refuse a node running other code.
* ``train``: a baffle plan in, the K float32 loss differences and the batch size out. Two encodings of
  the same plan arrive here: Message-API records (plain mode) and, under SecAgg+, Flower's legacy FitIns
  records wrapped by ``secaggplus_mod``, which masks the K-vector before it leaves the node.
  No gradient and no weight ever leaves the node.
"""

from __future__ import annotations

from functools import lru_cache

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.client.mod import secaggplus_mod  # legacy location: flwr 1.42 keeps SecAgg+ there
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from baffle.flower import records
from baffle.config import Config
from baffle.flower.config import FlowerOptions, parse_run_config
from baffle.flower.node import STATE, Node, node_identity, partition_data
from baffle.flower.secagg_faults import secagg_fault_mod  # a no-op unless a test sets node config secagg-fault
from baffle.flower.server_core import NODE_INFO
from baffle.flower.versions import VERSIONS, local_versions

LEGACY_FITINS = "fitins.config"  # ConfigRecord name of a legacy FitIns (what SecAgg+ delivers)


@lru_cache(maxsize=8)
def _parsed(items: tuple) -> tuple[Config, FlowerOptions]:
    return parse_run_config(dict(items))


def run_config(context: Context) -> tuple[Config, FlowerOptions]:
    """The run config, parsed once per process and run config (validation costs about a client step;
    a simulation process serves many nodes). Shared, so read-only: nodes never change it."""
    return _parsed(tuple(sorted(context.run_config.items())))


def _node(context: Context) -> Node:
    cfg, opts = run_config(context)
    state = context.state.config_records.get(STATE)
    return Node(cfg, node_identity(context.node_config), dict(state) if state is not None else None, opts.flwr_partitioner)


def _save(node: Node, context: Context) -> None:
    context.state.config_records[STATE] = ConfigRecord(node.state)


def secaggplus_when_asked(msg: Message, ctxt: Context, call_next):
    """Run Flower's ``secaggplus_mod`` only for SecAgg+ messages, so one ClientApp serves both modes."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    cfg, opts = run_config(context)
    ident = node_identity(context.node_config)
    samples = len(partition_data(cfg, ident.partition_id, ident.num_partitions, opts.flwr_partitioner))  # just the data
    info = MetricRecord({"partition-id": ident.partition_id, "num-partitions": ident.num_partitions, "num-samples": samples})
    versions = ConfigRecord(local_versions())  # the server refuses a node whose baffle or noise spec differ
    return Message(RecordDict({NODE_INFO: info, VERSIONS: versions}), reply_to=msg)


@app.train(mods=[secagg_fault_mod, secaggplus_when_asked])
def train(msg: Message, context: Context) -> Message:
    node = _node(context)
    if LEGACY_FITINS in msg.content.config_records:  # SecAgg+ stage "collect masked vectors"
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
        from flwr.compat.common import recorddict_compat as compat

        payload = records.from_fitins(compat.recorddict_to_fitins(msg.content, keep_input=True))
        upload = node.handle(payload)
        _save(node, context)
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([upload.loss_diffs]), upload.num_samples, {"round": upload.round})
        return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)
    upload = node.handle(records.from_records(msg.content))
    _save(node, context)
    return Message(records.upload_to_records(upload), reply_to=msg)
