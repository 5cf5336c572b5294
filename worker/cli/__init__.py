"""The `keyrotor` command."""
