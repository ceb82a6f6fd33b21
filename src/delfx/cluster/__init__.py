"""Work split into shards, run in this process, as one slice of an array job, or on Ray.

- :mod:`~delfx.cluster.plan`: which images each shard holds (contiguous ranges of the sorted
  image list), the plan file and the per-shard done markers that make a killed run resumable.
- :mod:`~delfx.cluster.distributor`: where the shards run (``sequential``, ``--shard I/N``,
  ``--ray auto|ADDRESS|local[N]``) and the driver loop that runs them.
- :mod:`~delfx.cluster.ray_pool`: the Ray side: one actor per worker holding the model.
- :mod:`~delfx.cluster.work`: what a worker does with one shard (extract its photos, index its
  postings).
"""
