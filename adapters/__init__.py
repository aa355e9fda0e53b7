"""Adapters between the release core and the outside: the CLI, the local Prefect server, the webhook
receiver and Prefect Secret blocks. The core (`sunday_release`) imports none of them, nor Prefect."""
