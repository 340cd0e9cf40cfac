"""The callback server process: `create_app(settings)`, its blueprints, the manager that applies
decisions, the store and its event log, and the reconciler. `callback_server.py` runs it."""
