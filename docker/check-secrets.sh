#!/bin/bash
# Refuses to let the stack start with a placeholder or weak secret (compose service
# `secrets-check`, which every service that takes a secret waits for).
#   check-secrets.sh NAME...   checks each named environment variable; exit 1 names every bad one.
# Rules: set, not a placeholder such as .env.example's `change-me`, at least 12 characters;
# database passwords URL-safe (they sit inside SQLAlchemy URLs); the Fernet key a real Fernet key.
# `${VAR:?}` in compose.yaml only catches an unset variable; this catches the copied example.
set -uo pipefail

MIN_LENGTH=12
GENERATE='python -c "import secrets; print(secrets.token_urlsafe(24))"'
GENERATE_FERNET='python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'

# Lower-cased with - and _ removed, a secret containing one of these is a placeholder.
PLACEHOLDERS=(changeme replaceme placeholder yoursecret yourpassword)

is_placeholder() {
  local squashed=${1,,}
  squashed=${squashed//[-_]/}
  local word
  for word in "${PLACEHOLDERS[@]}"; do
    [[ $squashed == *"$word"* ]] && return 0
  done
  return 1
}

problem() {  # name, value: prints what is wrong with the secret, nothing when it is fine
  local name=$1 value=$2
  if [[ -z $value ]]; then
    echo "is empty"
  elif is_placeholder "$value"; then
    echo "is a placeholder (like .env.example's change-me)"
  elif [[ $name == *FERNET_KEY ]]; then
    [[ $value =~ ^[A-Za-z0-9_-]{43}=$ ]] || echo "is not a Fernet key (44 URL-safe base64 characters)"
  elif ((${#value} < MIN_LENGTH)); then
    echo "has ${#value} characters, fewer than $MIN_LENGTH"
  elif [[ $name == *DB_PASSWORD && ! $value =~ ^[A-Za-z0-9._~-]+$ ]]; then
    echo "has characters that break a database URL (use letters, digits, - _ . ~)"
  fi
}

if (($# == 0)); then
  echo "usage: $0 NAME... (the environment variables holding secrets)" >&2
  exit 2
fi
bad=0
for name in "$@"; do
  reason=$(problem "$name" "${!name-}")
  if [[ -n $reason ]]; then
    generate=$GENERATE
    [[ $name == *FERNET_KEY ]] && generate=$GENERATE_FERNET
    echo "refusing to start: $name $reason. Set $name in .env; generate one with: $generate" >&2
    bad=1
  fi
done
if ((bad)); then
  exit 1
fi
echo "secrets-check: $# secrets set, none a placeholder, all at least $MIN_LENGTH characters"
