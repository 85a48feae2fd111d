"""The TD3 learner. Start with ``update.py`` (the update in the paper's order; its math in
``losses.py``), then ``td3.py`` (TD3Learner: the state it updates) and ``loop.py`` (sample ->
update -> publish). How an update runs on a device: ``execution.py`` (compile, side streams
in ``streams.py``, CUDA graphs in ``graphs.py``), ``device.py``, ``frame_cache.py``,
``precision.py``."""
