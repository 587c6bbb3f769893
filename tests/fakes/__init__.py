"""In-process fakes of the providers' HTTP services, for keyswap's tests."""

from .api import FakeAPI
from .oauth import CLIENTS, PATHS, PROVIDERS, FakeOAuth
from .server import Call, FakeServer

__all__ = ["CLIENTS", "PATHS", "PROVIDERS", "Call", "FakeAPI", "FakeOAuth", "FakeServer"]
