#!/usr/bin/env bash
# Start Postfix in the foreground with the settings of the environment:
#   POSTFIX_HOSTNAME            the name it greets and signs with (required)
#   POSTFIX_MYNETWORKS          who may relay (default: the private ranges)
#   POSTFIX_RELAYHOST           e.g. [smtp.example.com]:587; empty: deliver directly
#   POSTFIX_RELAYHOST_USERNAME  its SASL login, with
#   POSTFIX_RELAYHOST_PASSWORD  (never logged; only its hashed 0600 map is kept)
set -euo pipefail

: "${POSTFIX_HOSTNAME:?set POSTFIX_HOSTNAME}"
postconf -e "myhostname=$POSTFIX_HOSTNAME"
if [[ -n ${POSTFIX_MYNETWORKS:-} ]]; then
    postconf -e "mynetworks=$POSTFIX_MYNETWORKS"
fi
if [[ -n ${POSTFIX_RELAYHOST:-} ]]; then
    postconf -e "relayhost=$POSTFIX_RELAYHOST" "smtp_tls_security_level=encrypt"
    if [[ -n ${POSTFIX_RELAYHOST_USERNAME:-} ]]; then
        umask 077
        printf '%s %s:%s\n' "$POSTFIX_RELAYHOST" "$POSTFIX_RELAYHOST_USERNAME" \
            "${POSTFIX_RELAYHOST_PASSWORD:?set POSTFIX_RELAYHOST_PASSWORD}" >/etc/postfix/sasl_passwd
        postmap hash:/etc/postfix/sasl_passwd
        rm -f /etc/postfix/sasl_passwd
        postconf -e "smtp_sasl_auth_enable=yes"
    fi
fi
postfix check
exec postfix start-fg
