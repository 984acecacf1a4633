#!/usr/bin/env bash
# The soak test (runtime-cli/tests/e2e_soak.rs, ignored in `cargo test`): SOAK_COUNT
# sandboxes (default 20) created, exec'd into and deleted, 2 to 4 at a time, with the host's
# processes, mounts, sockets, state directories, jail cgroups and fds counted before and
# after. Needs root, /dev/kvm and `eval "$(scripts/setup.sh)"` (kernel, agent.ext4). Takes
# many minutes: each sandbox boots the real guest.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test -p runtime-cli --test e2e_soak -- --ignored --nocapture "$@"
