"""Use cases of the Campaign Service and the unit-of-work boundary they run in."""
