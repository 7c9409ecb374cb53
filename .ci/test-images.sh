#!/usr/bin/env bash
# Builds the local images the test suite uses when no registry can be reached: for its servers
# (tests/support/containers.rs) a minimal Debian with `redis-server`, and one with PostgreSQL and
# an entrypoint that does what the official image's does for the tests (initdb with trust
# authentication on first start, then `postgres` with the given arguments); and a plain minimal
# Debian, the RUNTIME_IMAGE of the Dockerfile (tests/image.rs). Made with mmdebstrap from Debian's
# packages and `docker import`ed; an image already present is kept.
#
#   .ci/test-images.sh            # prints the three image names: Redis, PostgreSQL, Debian
set -euo pipefail

REDIS_IMAGE="${SLUICE_TEST_REDIS_IMAGE:-sluice-test/redis:bookworm}"
POSTGRES_IMAGE="${SLUICE_TEST_POSTGRES_IMAGE:-sluice-test/postgres:bookworm}"
DEBIAN_IMAGE="${SLUICE_TEST_DEBIAN_IMAGE:-sluice-test/debian:bookworm}"
SUITE=bookworm

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

build() {
    local image=$1 packages=$2 hook=$3
    if docker image inspect "$image" >/dev/null 2>&1; then
        echo "test image $image: present" >&2
        return
    fi
    echo "test image $image: building (mmdebstrap $SUITE + $packages)" >&2
    mmdebstrap --quiet --variant=minbase --include="$packages" \
        --customize-hook="$hook" \
        --customize-hook='rm -rf "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
        --format=tar "$SUITE" "$work/rootfs.tar"
    docker import --change 'CMD ["sh"]' "$work/rootfs.tar" "$image" >/dev/null
    rm -f "$work/rootfs.tar"
}

# Nothing to add to Debian's redis-server.
build "$REDIS_IMAGE" redis-server 'true'

# The official image's entrypoint contract, as far as the tests use it.
cat >"$work/docker-entrypoint.sh" <<'SH'
#!/bin/sh
set -e
if [ "$1" = postgres ]; then
    shift
    bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
    data=/var/lib/postgresql/data
    mkdir -p "$data" /var/run/postgresql
    chown postgres:postgres "$data" /var/run/postgresql
    if [ ! -s "$data/PG_VERSION" ]; then
        su postgres -s /bin/sh -c "$bin/initdb -D $data -U postgres --auth=trust" >/dev/null
    fi
    exec su postgres -s /bin/sh -c "exec $bin/postgres -D $data $*"
fi
exec "$@"
SH
build "$POSTGRES_IMAGE" postgresql \
    "install -m 0755 '$work/docker-entrypoint.sh' \"\$1/usr/local/bin/docker-entrypoint.sh\""

# The Dockerfile's runtime stage installs what it needs with apt-get.
build "$DEBIAN_IMAGE" ca-certificates 'true'

echo "$REDIS_IMAGE"
echo "$POSTGRES_IMAGE"
echo "$DEBIAN_IMAGE"
