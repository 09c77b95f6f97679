"""The ``graphwire`` command: it wires the processors, and holds the operator commands.

- ``main``     the parser, ``worker``, ``submit``, ``graphs``, ``state``, ``broker``, ``dev``
- ``common``   settings from flags and environment, shared argument helpers
- ``ops``      ``topics``, ``schema``, ``asyncapi``, ``doctor``
- ``doctor``   the production checklist
- ``audit``    ``audit``, ``db``, ``runs``, ``status``
- ``state``    ``state``, ``checkpoints``, ``dlq`` (their handlers)
- ``traffic``  ``submit --file``, ``tail``
- ``gateway``  ``gateway``, ``gateway-key``
- ``webhooks`` ``webhooks``
"""
