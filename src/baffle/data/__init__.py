"""Datasets for baffle: local files only, never the network.

The datasets come from files that are already on disk (a pip package for MNIST, a Debian package for
Fashion-MNIST, a directory or archive the user names for CIFAR and image folders), because the machines baffle runs on are often
offline and a silent download would make runs irreproducible.

One idea per module; import from the module that owns the name:

- ``dataset``: :class:`~baffle.data.dataset.Dataset`, the in-memory normalized tensors a client indexes
- ``registry``: dataset names and facts (``DATASET_INFO``), where each dataset's files live, ``load_dataset``
- ``formats``: readers of the on-disk formats (MNIST CSV, IDX, CIFAR python pickles)
- ``imagefolder``: ``<split>/<class>/<image>`` datasets from a directory or a .tar/.tar.gz, decoded once
- ``cache``: the user's cache directory and the parsed-array (.npz) cache
- ``synthetic``: a small learnable image task for tests and quick runs
- ``partition``: how sample indices are split among clients (iid, Dirichlet, shards)
- ``augment``: the CIFAR augmentation (pad-4 random crop, horizontal flip)
- ``tasks``: shifted tasks for fine-tuning (class subsets, fixed transforms)
- ``text``: sentence datasets tokenized for the text models
- ``fixtures``: writers of tiny datasets in the real on-disk layouts, for tests

The minibatch sampler is numpy-only and shared with the ONNX client: ``baffle.protocol.sampler``.
"""
