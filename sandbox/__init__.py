"""`dpor-bot sandbox` and the tooling it is made of: the whole flow offline in a browser.

- `sandbox.server`: the sandbox (the bot and a local Slack in one process) and `run_sandbox`
- `sandbox.page`, `sandbox.render`, `sandbox.static`: the page, its JSON API and its Block Kit renderer
- `sandbox.seed`: the made-up workspace, people, subscriptions and partners
- `sandbox.standin`, `sandbox.workspace`: the local stand-in for Slack's Web API (tests use it too)
- `sandbox.signing`: Slack's request bodies, signed as Slack signs them (tests and bench use it too)

Importing this package loads nothing: the stand-in and the signing need neither the bot nor a database.
"""
