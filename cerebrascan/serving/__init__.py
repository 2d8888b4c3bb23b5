"""Serving: the transports around the pipeline and what guards them.

``http/`` (mounted routes and ASGI middleware), ``grpc/`` (the Open Inference Protocol server),
``runner_service.py`` (the BentoML service that batches cases next to the accelerator),
``jobs.py`` (async ``/analyze/submit`` retention), ``apikeys.py`` (the key ring) and
``settings.py`` (the ``auth``, ``jobs``, ``logging``, ``batching`` and ``grpc`` sections).
A transport decodes its input with :mod:`cerebrascan.inputs` and calls
:meth:`cerebrascan.pipeline.AnalysisPipeline.run`; nothing here does imaging maths.
"""
