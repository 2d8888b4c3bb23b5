"""Segmentation runners: execute a network over a whole preprocessed volume.

- :mod:`runners.protocol`: what a runner is (``SegmentationRunner``, ``TileRunner``).
- :mod:`runners.factory`: the one factory, ``build_runner``, choosing the engine by settings.
- :mod:`runners.window`: the one ``predict()`` (shape check, host or device window, mirror
  TTA, activation); an engine supplies only its network call.
- engines: :mod:`runners.onnx_runner`, :mod:`runners.torch_runner`,
  :mod:`runners.tensorrt_runner`; the maths in :mod:`runners.sliding_window`,
  :mod:`runners.device_sliding_window` and :mod:`runners.cross_case_batching`.
"""
