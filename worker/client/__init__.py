"""The signer, for services that sign tokens with a realm's key straight from the database.

The verifier, the subscriber and the event wire format moved to the keyrotor-client
distribution (`keyrotor_client`), which installs without the server; `worker.client.events`,
`.verifier` and `.subscriber` still import from there for this release.
"""
