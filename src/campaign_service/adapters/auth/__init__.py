"""Token verification: local JWT keys (JWKS, public key, dev key pair) or the Auth Service."""
