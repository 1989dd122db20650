#!/usr/bin/env bash
# Throwaway Dovecot IMAP/POP3 server for development and tests.
#   deploy/devmail/devmail.sh start DIR [--no-condstore] [--no-qresync] [--no-starttls]
#   deploy/devmail/devmail.sh stop DIR
#   deploy/devmail/devmail.sh status DIR          (exit 3 when stopped)
#   deploy/devmail/devmail.sh adduser DIR NAME PASSWORD
#   deploy/devmail/devmail.sh deliver DIR NAME [FOLDER] < message.eml
# Ports (start only): DEVMAIL_IMAP_PORT=10143 DEVMAIL_POP3_PORT=10110
#                     DEVMAIL_IMAPS_PORT=10993 DEVMAIL_POP3S_PORT=10995
# Needs root and deploy/devmail/install.sh. Any python3 >= 3.8 works (stdlib only).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${DEVMAIL_PYTHON:-python3}" "$here/devmail.py" "$@"
