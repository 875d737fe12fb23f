#!/usr/bin/env bash
# First start of the compose PostgreSQL (docker-entrypoint-initdb.d): the roles and database that
# adapters/postgres/provision.py creates elsewhere. campaign_owner owns the schema and runs
# migrations; campaign_app is the service's request path (no ownership, no superuser, no
# BYPASSRLS, a member of no other role, so RLS applies); campaign_relay is the outbox relay's and
# the tier-count metric's own login (sees every merchant's outbox rows; never granted to
# campaign_app).
set -euo pipefail
: "${CAMPAIGN_OWNER_PASSWORD:?}" "${CAMPAIGN_APP_PASSWORD:?}" "${CAMPAIGN_RELAY_PASSWORD:?}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v owner_pw="$CAMPAIGN_OWNER_PASSWORD" -v app_pw="$CAMPAIGN_APP_PASSWORD" \
    -v relay_pw="$CAMPAIGN_RELAY_PASSWORD" <<'SQL'
CREATE ROLE campaign_owner LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD :'owner_pw';
CREATE ROLE campaign_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD :'app_pw';
CREATE ROLE campaign_relay LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD :'relay_pw';
CREATE DATABASE campaign OWNER campaign_owner;
\connect campaign
GRANT CREATE, USAGE ON SCHEMA public TO campaign_owner;
SQL
