"""The orchestrator's REST API for booking systems (mounted at ``/v1``)."""

from orchestrator.api.app import HOOKS, OPENAPI, STORE, build_api_app
from orchestrator.api.hooks import ApiHooks, BookingChange, default_validate_and_assign, expand
from orchestrator.api.keys import create_api_key, list_api_keys, revoke_api_key

__all__ = [
    "HOOKS",
    "OPENAPI",
    "STORE",
    "ApiHooks",
    "BookingChange",
    "build_api_app",
    "create_api_key",
    "default_validate_and_assign",
    "expand",
    "list_api_keys",
    "revoke_api_key",
]
