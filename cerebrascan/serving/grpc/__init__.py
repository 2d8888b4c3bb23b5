"""The Open Inference Protocol (KServe v2 / Triton) over gRPC, next to the HTTP API.

BentoML 1.4's service API has no gRPC, so the front service starts this server in its own
threads (:func:`cerebrascan.serving.grpc.server.start_oip_server`) on ``grpc.port``; it shares the
service's :class:`~cerebrascan.pipeline.AnalysisPipeline`. See ``docs/serving.md``.
"""
