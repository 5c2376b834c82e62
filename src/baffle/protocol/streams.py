"""Every random stream of a run, named in one place.

A run is reproducible because every random draw comes from its own stream, seeded by a list of integers
(``numpy.random.SeedSequence([...])``), never from global RNG state: adding a draw to one feature cannot
shift the numbers another feature sees. This module is the registry of those lists. Two streams with the
same tag must differ in length or in the rest of the list; a new stream takes a new tag. The values are
frozen: changing one changes every result of every run (tests/test_pinned.py).

=================================  ==============================================  ============================
stream                             entropy                                         used by
=================================  ==============================================  ============================
direction seeds (FedSGD rounds)    ``[run_seed, round]`` -> K uint64 seeds          ``noise.round_seeds``
direction seeds (local steps)      ``[run_seed, round, client_id + 1, step + 1]``   ``client.Client.local_train``
data subsets (train, then test)    ``[run_seed, DATA_SUBSET]``                     simulator ``load_data``
client sampler seed                ``[run_seed, CLIENT_SEED, client_id]``          :func:`client_seed`
train-loss probe                   ``[run_seed, TRAIN_PROBE]``                     simulator ``build``
clients sampled in a round         ``[run_seed, CLIENT_SAMPLING, round]``          simulator ``sample_clients``
pretraining minibatches            ``[run_seed, PRETRAIN]``                        experiments/pretrain.py
hostile clients of a run           ``[run_seed, ATTACKERS, num_clients]``          ``attacks.attacker_ids``
attack noise                       ``[run_seed, ATTACK_NOISE, round, client_id]``  ``attacks.corrupt``
client failures and delays         ``[run_seed, FAULTS, round, client_id]``        ``faults.client_draws``
DP noise                           ``[run_seed, DP_NOISE, round, stream + 1]``     ``privacy.gaussian_noise``
server's trusted root batch        ``[run_seed, TRUST_ROOT]``                      ``sim.factory.attach_trust``
epoch permutation of a sampler     ``[sampler_seed, epoch]``                       ``sampler.BatchSampler``
client partition                   ``run_seed`` (plain)                            ``data.partition``
synthetic task templates           ``[data_seed, SYNTHETIC_TEMPLATES]``            ``data.synthetic``
synthetic samples                  ``[data_seed, split_code, num_samples]``        ``data.synthetic``
CIFAR fixture images               ``[fixture_seed, CIFAR_FIXTURE]``               ``data.fixtures``
ImageFolder fixture images         ``[fixture_seed, IMAGEFOLDER_FIXTURE]``         ``data.fixtures``
=================================  ==============================================  ============================

torch streams (not numpy, listed for completeness): model initialisation is ``torch.manual_seed(run_seed)``
before the model is built, adapter initialisation ``torch.Generator().manual_seed(run_seed)``, and each
client's augmentation generator ``torch.Generator().manual_seed(client_seed(run_seed, client_id))``.

The FedSGD direction seeds carry no tag (spec v1 of the noise, fixed before this registry existed), so
``[run_seed, 1]`` seeds both round 1's directions (``SeedSequence.generate_state``) and the data-subset
draws (``default_rng``). The two consume the same entropy in unrelated ways; they are kept as they are
because every published number depends on them.
"""

from __future__ import annotations

import numpy as np

DATA_SUBSET = 1
CLIENT_SEED = 2
TRAIN_PROBE = 3
CLIENT_SAMPLING = 4
PRETRAIN = 7
ATTACKERS = 7  # with num_clients appended, so it differs from PRETRAIN's [run_seed, 7]
ATTACK_NOISE = 8
FAULTS = 9
DP_NOISE = 10
TRUST_ROOT = 11
SYNTHETIC_TEMPLATES = 0x5EED
CIFAR_FIXTURE = 0xC1FA
IMAGEFOLDER_FIXTURE = 0x1F01


def rng(seed: int, tag: int, *extra: int) -> np.random.Generator:
    """The numpy generator of stream ``[seed, tag, *extra]``."""
    return np.random.default_rng([seed, tag, *extra])


def client_seed(run_seed: int, client_id: int) -> int:
    """Client ``client_id``'s sampler (and augmentation) seed: the same in-process and on a Flower node."""
    return int(np.random.SeedSequence([run_seed, CLIENT_SEED, client_id]).generate_state(1)[0])


def epoch_rng(sampler_seed: int, epoch: int) -> np.random.Generator:
    """The generator of one epoch's permutation of a client's samples."""
    return np.random.default_rng([sampler_seed, epoch])
