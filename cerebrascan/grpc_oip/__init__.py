"""The Open Inference Protocol (KServe v2 / Triton) over gRPC, next to the HTTP API.

BentoML 1.4's service API has no gRPC, so the front service starts this server in its own
threads (:func:`cerebrascan.grpc_oip.server.start_oip_server`) on ``grpc.port``; it shares the
service's :class:`~cerebrascan.analysis.AnalysisPipeline`. See ``docs/serving.md``.
"""
