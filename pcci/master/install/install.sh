#!/bin/sh
# Install a pcci worker on this machine, join it to its cluster and start it.
#
# A pcci master serves this script at /install.sh; `pcci join-token create`
# prints the line that fetches it, checks it against the hash in the line,
# and runs it as root:
#
#   sh install.sh --url http://MASTER:8080 --join tls:MASTER:7000 --token TOKEN [--name NAME]
#
# What it makes: PREFIX (default /opt/pcci) with a venv for each version
# in PREFIX/versions/, PREFIX/current pointing at the one in use,
# PREFIX/state (the worker's identity and journal), PREFIX/bin/pcci-worker
# (starts the worker), and the systemd unit pcci-worker.service.
# Run again, it upgrades in place and keeps the identity; --uninstall
# removes all of it.  Every file it fetches is checked against the hashes
# below, put here by the master that served it.
#
# Options:
#   --url URL         the master's REST API, where this script came from
#   --join ADDRESS    the master's worker port (tls:HOST:PORT)
#   --token TOKEN     the join token (not needed once this machine has joined)
#   --name NAME       the worker's name (default: this host's name)
#   --label KEY=VALUE a label for targeting (repeatable)
#   --prefix DIR      where to install (default /opt/pcci)
#   --python PATH     the Python to use (default: python3; 3.9 or newer)
#   --no-service      write no systemd unit: print how to start the worker
#   --uninstall       stop the worker and remove what this script made
set -eu

PCCI_VERSION='@VERSION@'
PCCI_WHEEL='@WHEEL@'
PCCI_WHEEL_SHA256='@WHEEL_SHA256@'
# The master's wheelhouse, "SHA256 FILE" a line; empty: the dependencies
# come from the package index pip is set to use.
PCCI_WHEELHOUSE='@WHEELHOUSE@'
UNIT=/etc/systemd/system/pcci-worker.service
MARK=.pcci-install
# Restarts of a version an upgrade restarted into that dies before reaching a
# master, after which the launcher goes back to the version before it.
CRASHES_MAX=3

say() { printf 'pcci: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

url= join= token= name= labels= prefix=/opt/pcci python= service=yes uninstall=no
while [ $# -gt 0 ]; do
    case $1 in
        --no-service) service=no; shift; continue ;;
        --uninstall) uninstall=yes; shift; continue ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --url|--join|--token|--name|--label|--prefix|--python)
            [ $# -ge 2 ] || die "$1 needs a value" ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    case $1 in
        --url) url=${2%/} ;;
        --join) join=$2 ;;
        --token) token=$2 ;;
        --name) name=$2 ;;
        --label)
            case $2 in
                *[!A-Za-z0-9=._:/@+-]*|'') die "--label is KEY=VALUE of letters, digits and ._:/@+-, not '$2'" ;;
            esac
            labels="$labels --label $2" ;;
        --prefix) prefix=${2%/} ;;
        --python) python=$2 ;;
    esac
    shift 2
done
case $prefix in
    /*) ;;
    *) die "--prefix is an absolute path, not $prefix" ;;
esac
if [ "$(id -u)" != 0 ] && [ "$service" = yes ]; then
    die "run this as root (or with --no-service and a --prefix you may write)"
fi
has_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

ours() { [ -f "$UNIT" ] && grep -q "^# Written by pcci's install.sh" "$UNIT"; }

running() {  # running PID: alive, and not a zombie its parent has yet to reap
    kill -0 "$1" 2>/dev/null || return 1
    [ -r "/proc/$1/stat" ] || return 0
    [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -c1)" != Z ]
}

stop_worker() {
    if ours && has_systemd; then
        systemctl disable --now pcci-worker >/dev/null 2>&1 || true
    fi
    pidfile=$prefix/state/worker.pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || return 0
    for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
        running "$pid" || return 0
        sleep 1
    done
    die "the worker (pid $pid) does not stop: not removing $prefix"
}

if [ "$uninstall" = yes ]; then
    [ -d "$prefix" ] || die "nothing to remove: no $prefix"
    [ -f "$prefix/$MARK" ] || die "$prefix was not made by this script: not removing it"
    stop_worker
    if ours; then
        rm -f "$UNIT"
        has_systemd && systemctl daemon-reload
    fi
    rm -rf "$prefix"
    say "worker removed: $prefix is gone"
    exit 0
fi
[ -n "$url" ] || die "--url is the master's address (http://MASTER:8080), as the install line gives it"
[ -n "$join" ] || die "--join is the master's worker port (tls:MASTER:7000), as the install line gives it"
if [ -n "$token" ] && ! printf %s "$token" | grep -Eqx '[a-z2-7]{8}[.][a-z2-7]{26}[.][A-Za-z0-9_-]{43}'; then
    die "--token is not a join token (ID.SECRET.PIN, as pcci join-token create prints it)"
fi

# A Python for the worker: 3.9 or newer, with venv.
python=${python:-$(command -v python3 || true)}
suggest() {
    id=$(. /etc/os-release 2>/dev/null && echo "$ID ${ID_LIKE:-}" || true)
    case $id in
        *debian*|*ubuntu*) echo "apt-get install python3 python3-venv" ;;
        *rhel*|*fedora*|*centos*|*rocky*|*almalinux*|*amzn*) echo "dnf install python3.11, then --python /usr/bin/python3.11" ;;
        *suse*) echo "zypper install python3" ;;
        *alpine*) echo "apk add python3" ;;
        *arch*) echo "pacman -S python" ;;
        *) echo "install your system's Python 3 package, or give one with --python PATH" ;;
    esac
}
[ -n "$python" ] || die "no python3 here: a worker needs Python 3.9 or newer: $(suggest)"
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
    die "$python does not run: a worker needs Python 3.9 or newer: $(suggest)"
case $version in
    [0-2].*|3.[0-8]) die "$python is Python $version; a worker needs 3.9 or newer: $(suggest)" ;;
esac
"$python" -c 'import venv, ensurepip' 2>/dev/null ||
    die "$python has no venv module: $(suggest)"
python=$("$python" -c 'import sys; print(sys.executable)')  # not a shim (pyenv's): it runs often

work=$(mktemp -d)
made=
cleanup() {
    status=$?
    rm -rf "$work"
    if [ "$status" != 0 ] && [ -n "$made" ]; then
        rm -rf "$made"
        say "nothing was changed: what this run made is removed"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fetch() {  # fetch URL FILE
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL -o "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -O "$2" "$1"
    else
        "$python" -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$1" "$2"
    fi || die "cannot fetch $1"
}
sha256() {
    "$python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
}

fetch "$url/dist/$PCCI_WHEEL" "$work/$PCCI_WHEEL"
[ "$(sha256 "$work/$PCCI_WHEEL")" = "$PCCI_WHEEL_SHA256" ] ||
    die "$url/dist/$PCCI_WHEEL does not match its hash: not installed"

if [ ! -d "$prefix" ]; then
    mkdir -p "$prefix"
    made=$prefix
fi
touch "$prefix/$MARK"
mkdir -p "$prefix/versions" "$prefix/state" "$prefix/bin"
chmod 700 "$prefix/state"
here=$prefix/versions/$PCCI_VERSION-$(printf %.12s "$PCCI_WHEEL_SHA256")

if [ ! -f "$here/.complete" ]; then
    rm -rf "$here"
    [ -n "$made" ] || made=$here
    say "installing pcci $PCCI_VERSION with Python $version in $here"
    "$python" -m venv "$here" || die "cannot make a venv in $here"
    pip="$here/bin/python -m pip --disable-pip-version-check --no-input -q"
    if [ -n "$PCCI_WHEELHOUSE" ]; then
        # Dependencies from the master, each checked against its hash.
        host=$(printf %s "$url" | sed 's|^[a-z]*://||; s|[:/].*||')
        $pip download --dest "$work/wheels" --no-index --find-links "$url/wheelhouse/" \
            --trusted-host "$host" "$work/$PCCI_WHEEL" >"$work/pip.log" 2>&1 ||
            { tail -n 15 "$work/pip.log" >&2; die "cannot fetch pcci's dependencies from $url/wheelhouse/"; }
        bad=$(printf '%s\n' "$PCCI_WHEELHOUSE" | "$python" -c '
import hashlib, os, sys
known = set(sys.stdin.read().splitlines())
for name in sorted(os.listdir(sys.argv[1])):
    with open(os.path.join(sys.argv[1], name), "rb") as f:
        if name != sys.argv[2] and hashlib.sha256(f.read()).hexdigest() + " " + name not in known:
            print(name)
            break
' "$work/wheels" "$PCCI_WHEEL")
        [ -z "$bad" ] || die "$url/wheelhouse/$bad does not match its hash: not installed"
        from="--no-index --find-links $work/wheels"
    else
        from=
    fi
    # Byte-compiled as it is first imported: half the install's time saved.
    # shellcheck disable=SC2086
    $pip install --no-compile $from "$work/$PCCI_WHEEL" >"$work/pip.log" 2>&1 ||
        { tail -n 15 "$work/pip.log" >&2; die "pip cannot install pcci $PCCI_VERSION in $here"; }
    touch "$here/.complete"
fi

if [ -z "$name" ]; then
    name=$("$here/bin/python" -c 'from pcci.worker.connection import default_name; print(default_name())')
fi
state=$prefix/state
if [ ! -f "$state/identity/$name.crt" ]; then
    [ -n "$token" ] || die "--token is needed: worker $name has not joined yet"
    say "joining $join as $name"
    # shellcheck disable=SC2086
    "$here/bin/twistd" --nodaemon --pidfile= --logfile="$work/join.log" pcci-worker --join-only \
        --join "$join" --token "$token" --name "$name" --state-dir "$state" $labels >"$work/join.out" 2>&1 || {
        touch "$work/join.log"
        why=$(sed -n 's/.*cannot join: //p' "$work/join.log" | tail -n 1)
        [ -n "$why" ] || why=$(tail -n 1 "$work/join.out" | sed 's/^[^:]*twistd[^:]*: //')
        die "cannot join: ${why:-see the worker's log}"
    }
fi

previous=$(readlink "$prefix/current" 2>/dev/null || true)
ln -sfn "versions/${here##*/}" "$prefix/current"
cat >"$prefix/bin/pcci-worker" <<EOF
#!/bin/sh
# Starts the pcci worker $name (written by pcci's install.sh; run again, it rewrites this).
# A version an upgrade restarted into that stops before it reaches a master,
# $CRASHES_MAX times over (it cannot even start), gives way to the one before it.
record="$prefix/upgrade.json" starts="$prefix/upgrade.starts"
if grep -q '"state": "restarting"' "\$record" 2>/dev/null; then
    n=\$(( \$(cat "\$starts" 2>/dev/null || echo 0) + 1 ))
    echo "\$n" >"\$starts"
    from=\$(sed -n 's/.*"from": "\([^"]*\)".*/\1/p' "\$record")
    if [ "\$n" -gt $CRASHES_MAX ] && [ -n "\$from" ] && [ -d "$prefix/versions/\$from" ]; then
        echo "pcci: the upgraded worker stopped \$n times before reaching a master: back to \$from" >&2
        ln -sfn "versions/\$from" "$prefix/current"
    fi
else
    rm -f "\$starts"
fi
exec "$prefix/current/bin/twistd" --nodaemon --pidfile="$state/worker.pid" pcci-worker \\
    --join "$join" --name "$name" --state-dir "$state"$labels "\$@"
EOF
chmod 755 "$prefix/bin/pcci-worker"
made=
# Kept: the version in use and the one before it.
for old in "$prefix/versions"/*; do
    case versions/${old##*/} in
        "versions/${here##*/}"|"$previous") ;;
        *) rm -rf "$old" ;;
    esac
done

if [ "$service" = yes ] && has_systemd; then
    cat >"$UNIT" <<EOF
# Written by pcci's install.sh; pcci's install.sh --uninstall removes it.
[Unit]
Description=pcci worker $name
After=network-online.target
# Room for the launcher to go back from an upgrade that cannot start ($CRASHES_MAX restarts).
StartLimitIntervalSec=60
StartLimitBurst=10
Wants=network-online.target

[Service]
ExecStart=$prefix/bin/pcci-worker
Restart=on-failure
RestartSec=2
# A refusal trying again cannot mend: token (10), pin (11), name (12),
# request (13), identity revoked (14).
RestartPreventExitStatus=10 11 12 13 14
KillMode=control-group
TimeoutStopSec=30
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
EOF
    systemctl daemon-reload
    systemctl enable pcci-worker >/dev/null 2>&1
    systemctl restart pcci-worker || die "systemd cannot start pcci-worker: see journalctl -u pcci-worker"
    say "worker $name (pcci $PCCI_VERSION, Python $version) runs: systemctl status pcci-worker"
else
    [ "$service" = yes ] && say "no systemd here: the worker is not started as a service"
    say "worker $name (pcci $PCCI_VERSION, Python $version) installed; start it with: $prefix/bin/pcci-worker"
    pid=$(cat "$state/worker.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && running "$pid"; then
        say "the worker running now (pid $pid) keeps its version until it is started again"
    fi
fi
