"""Failures of the ports the use cases depend on (service/ports.py): a dependency that is down,
credentials a TokenVerifier refuses. Adapters raise them at their edge; the API answers them.

Rule: an error lives with the layer whose contract names it. The domain's rules raise
domain/errors.py; a port's contract (which any adapter implementing it may raise) raises these.
"""

from __future__ import annotations

from campaign_service.domain.errors import CampaignError


class Unavailable(CampaignError, code="UNAVAILABLE", label="unavailable"):
    """A dependency (the database, the token keys, the Auth Service) is down or too slow right
    now; the caller may retry."""


class Unauthenticated(CampaignError, code="UNAUTHENTICATED", label="unauthenticated"):
    """No credentials, or credentials that are not valid; the message says which, nothing more."""


class RateLimited(CampaignError, code="RESOURCE_EXHAUSTED", label="rate_limited"):
    """The merchant used up its request budget (service/ports.RateLimiter); retry later."""

    def __init__(self, retry_after_s: float) -> None:
        ms = max(1_000_000, int(retry_after_s * 1e9)) // 1_000_000  # as the RetryInfo detail says
        super().__init__(f"rate limit exceeded for this merchant; retry in {ms} ms")
        self.retry_after_s = retry_after_s
