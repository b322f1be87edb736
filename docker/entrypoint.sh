#!/bin/sh
# Runs the command as PUID:PGID with UMASK (Unraid: 99:100, 002). Started as another user
# (`docker run --user`), it runs the command as that user and changes nothing.
set -eu

umask "${UMASK:-002}"

if [ "$(id -u)" != "0" ]; then
    exec "$@"
fi

PUID="${PUID:-99}"
PGID="${PGID:-100}"
case "$PUID$PGID" in
    *[!0-9]*) echo "mobilesd: PUID and PGID must be numbers (found '$PUID', '$PGID')" >&2; exit 2 ;;
esac

# Only the folders MobileSD owns are handed over; the model libraries and the inbox are the
# user's shares, and a recursive chown of a share would be rude and slow.
for dir in "${CONFIG_DATA_PATH:-/config}" "${STABLE_DIFFUSION_SAVE_PATH:-/outputs}"; do
    mkdir -p "$dir"
    if [ "$(stat -c %u:%g "$dir")" != "$PUID:$PGID" ]; then
        chown "$PUID:$PGID" "$dir"
    fi
done

exec setpriv --reuid="$PUID" --regid="$PGID" --clear-groups -- "$@"
