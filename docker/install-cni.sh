#!/bin/sh
# Installs (or removes) the ztunnel-cni plugin on the node: run by ztunnel's init container
# with the host's CNI directories mounted.
#
#   install-cni install     copy the plugin into $CNI_BIN_DIR and chain it last in the
#                           runtime's CNI configuration list (the first *.conflist in
#                           $CNI_NET_DIR, as the runtime picks it); idempotent
#   install-cni uninstall   take it out of that list again and remove the binary
#
# Environment: CNI_BIN_DIR (default /host/opt/cni/bin), CNI_NET_DIR (/host/etc/cni/net.d),
# CNI_PLUGIN (/usr/local/bin/ztunnel-cni), AGENT_SOCKET (/var/run/ztunnel/cni.sock),
# EXCLUDE_NAMESPACES (comma-separated, kube-system,istio-system), WAIT_SECONDS (how long to
# wait for the primary network's configuration to appear; 0 = forever, the default).
#
# Files are replaced by rename, so the runtime never reads half a file. The runtime's primary
# network plugin may rewrite its list later and drop our entry; re-run install (restart the
# ztunnel pod) after changing the primary network.
set -eu

CNI_BIN_DIR=${CNI_BIN_DIR:-/host/opt/cni/bin}
CNI_NET_DIR=${CNI_NET_DIR:-/host/etc/cni/net.d}
CNI_PLUGIN=${CNI_PLUGIN:-/usr/local/bin/ztunnel-cni}
AGENT_SOCKET=${AGENT_SOCKET:-/var/run/ztunnel/cni.sock}
EXCLUDE_NAMESPACES=${EXCLUDE_NAMESPACES:-kube-system,istio-system}
WAIT_SECONDS=${WAIT_SECONDS:-0}
TYPE=ztunnel-cni

log() { echo "install-cni: $*" >&2; }

# The configuration list the runtime uses: the first file by name among *.conf, *.conflist
# and *.json. Status 1: none yet; 2: a single-plugin file that cannot be chained (said so
# rather than guessed around).
find_conflist() {
    first=$(find "$CNI_NET_DIR" -maxdepth 1 -type f \( -name '*.conf' -o -name '*.conflist' -o -name '*.json' \) \
        | LC_ALL=C sort | head -n 1)
    [ -n "$first" ] || return 1
    case "$first" in
        *.conflist) echo "$first" ;;
        *)
            log "$first is the runtime's first CNI configuration but not a *.conflist; cannot chain $TYPE into it"
            return 2
            ;;
    esac
}

# Writes stdin to $1 (mode $2, default 0644) through a temporary name the runtime ignores,
# then renames: the file is complete and has its mode before anyone can run or read it.
replace() {
    tmp="$(dirname "$1")/.$(basename "$1").ztunnel-tmp"
    cat >"$tmp"
    chmod "${2:-0644}" "$tmp"
    mv -f "$tmp" "$1"
}

install() {
    [ -x "$CNI_PLUGIN" ] || { log "$CNI_PLUGIN is missing or not executable"; exit 2; }
    mkdir -p "$CNI_BIN_DIR"
    replace "$CNI_BIN_DIR/$TYPE" 0755 <"$CNI_PLUGIN"
    waited=0
    while :; do
        found=0
        conflist=$(find_conflist) || found=$?
        [ "$found" -eq 0 ] && break
        [ "$found" -eq 2 ] && exit 2
        if [ "$WAIT_SECONDS" -ne 0 ] && [ "$waited" -ge "$WAIT_SECONDS" ]; then
            log "no *.conflist in $CNI_NET_DIR after ${WAIT_SECONDS}s"
            exit 3
        fi
        [ "$waited" -eq 0 ] && log "waiting for the primary network's configuration in $CNI_NET_DIR"
        sleep 2
        waited=$((waited + 2))
    done
    entry=$(jq -n --arg type "$TYPE" --arg socket "$AGENT_SOCKET" --arg exclude "$EXCLUDE_NAMESPACES" \
        '{type: $type, agentSocket: $socket, excludeNamespaces: ($exclude | split(",") | map(select(. != "")))}')
    # Our entry, replaced if present, always last: it must see the final prevResult.
    # Computed before anything is written: a list jq cannot read stays as it was.
    chained=$(jq --argjson entry "$entry" --arg type "$TYPE" \
        'if (.plugins | type) != "array" then error("no plugins array") else . end
         | .plugins = ([.plugins[] | select(.type != $type)] + [$entry])' "$conflist") \
        || { log "$conflist: not a CNI configuration list jq can read"; exit 2; }
    printf '%s\n' "$chained" | replace "$conflist"
    log "chained $TYPE last in $conflist"
}

uninstall() {
    if conflist=$(find_conflist); then
        unchained=$(jq --arg type "$TYPE" '.plugins = [.plugins[] | select(.type != $type)]' "$conflist") \
            || { log "$conflist: not a CNI configuration list jq can read"; exit 2; }
        printf '%s\n' "$unchained" | replace "$conflist"
        log "removed $TYPE from $conflist"
    fi
    rm -f "$CNI_BIN_DIR/$TYPE"
}

case "${1:-}" in
    install) install ;;
    uninstall) uninstall ;;
    *) echo "usage: install-cni install|uninstall" >&2; exit 64 ;;
esac
