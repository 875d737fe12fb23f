"""Who a caller is (a verified token's principal) and what its scopes allow.

Building a principal from a verifier's answer is the verifiers' work: adapters/auth/principals.py."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from uuid import UUID

from campaign_service.domain.errors import PermissionDenied

# The scopes a token may carry (space-separated `scope` claim, a `scp` list, or the Auth
# Service's `scopes`). proto/auth/v1/auth.proto documents them for token issuers.
SCOPE_READ = "tiers:read"  # read the token merchant's tiers and customer tiers
SCOPE_WRITE = "tiers:write"  # create, update and delete the token merchant's tiers (implies read)
SCOPE_SERVICE = "campaign:service"  # another service: read any merchant
SCOPE_ADMIN = "campaign:admin"  # operators: read and write any merchant
SCOPES: tuple[str, ...] = (SCOPE_READ, SCOPE_WRITE, SCOPE_SERVICE, SCOPE_ADMIN)

MAX_SUBJECT_CHARS = 256
INVALID_TOKEN = "invalid token"  # noqa: S105 - a message, not a credential


class Access(enum.Enum):
    """What an RPC does to a merchant's data; decides the scopes it needs."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"  # anything not known to be a plain read or write: operators only


_NEEDED = {Access.READ: SCOPE_READ, Access.WRITE: SCOPE_WRITE, Access.ADMIN: SCOPE_ADMIN}


@dataclass(frozen=True)
class Principal:
    """A verified caller. `merchant_id` is None for tokens not bound to one merchant."""

    subject: str
    merchant_id: UUID | None
    scopes: frozenset[str]
    expires_at: float  # seconds since the epoch
    # How long the verifier allows this answer to be reused without asking it again (seconds;
    # None: no bound of its own). The Auth Service's `max_cache_seconds`.
    reuse_for_s: float | None = None

    def cross_merchant(self, access: Access) -> bool:
        if SCOPE_ADMIN in self.scopes:
            return True
        return access is Access.READ and SCOPE_SERVICE in self.scopes

    def scoped_for(self, access: Access) -> bool:
        if SCOPE_ADMIN in self.scopes:
            return True
        if access is Access.READ:
            return bool(self.scopes & {SCOPE_READ, SCOPE_WRITE, SCOPE_SERVICE})
        return access is Access.WRITE and SCOPE_WRITE in self.scopes


def authorize(principal: Principal, merchant_id: UUID | None, access: Access) -> None:
    """Raises PermissionDenied unless `principal` may do `access` on `merchant_id`'s data.

    `merchant_id` None means a request not scoped to one merchant: cross-merchant tokens only.
    """
    if not principal.scoped_for(access):
        raise PermissionDenied(f"the token lacks the {_NEEDED[access]} scope")
    if (merchant_id is None or principal.merchant_id != merchant_id) and not principal.cross_merchant(access):
        raise PermissionDenied("the token is not valid for this merchant")
