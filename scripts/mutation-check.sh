#!/usr/bin/env bash
# Mutation check of the safety nets: breaks each one on purpose in a
# throwaway worktree of HEAD and runs the test that guards it, which must
# then FAIL. A mutation the tests do not catch is a test that cannot fail.
#
#   scripts/mutation-check.sh            # every mutation
#   scripts/mutation-check.sh reaper     # one, by name
#
# Needs what the test suite needs (scripts/provision-test-env.sh). Builds in
# target/mutation (about 3 minutes the first time, then incremental). Prints
# one line per mutation; exits 1 if any mutation survived.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
export EPHEM_REGISTRY_MIRROR="${EPHEM_REGISTRY_MIRROR:-localhost:5000}"
export CARGO_TARGET_DIR="$repo/target/mutation"

work="$(mktemp -d)"
cleanup() { git -C "$repo" worktree remove --force "$work/tree" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
git worktree add --detach "$work/tree" HEAD >/dev/null

# NAME FILE OLD NEW TEST...: replace OLD (which must occur exactly once) by
# NEW in FILE, run TEST, expect it to fail, restore FILE.
mutate() {
	local name="$1" file="$2" old="$3" new="$4"
	shift 4
	if [ -n "${only:-}" ] && [ "$only" != "$name" ]; then return 0; fi
	local path="$work/tree/$file"
	cp "$path" "$work/original"
	python3 - "$path" "$old" "$new" <<-'EOF'
		import sys
		path, old, new = sys.argv[1:4]
		text = open(path).read()
		if text.count(old) != 1:
		    sys.exit(f"mutation site not found exactly once in {path}: {old!r}")
		open(path, "w").write(text.replace(old, new))
	EOF
	local log="$work/$name.log" started=$SECONDS
	if (cd "$work/tree" && "$@") >"$log" 2>&1; then
		printf 'mutation %-10s SURVIVED: `%s` passed with %s broken (log: %s)\n' "$name" "$*" "$file" "$log"
		survived=1
		trap - EXIT
	else
		printf 'mutation %-10s caught in %3d s by `%s`\n' "$name" $((SECONDS - started)) "$*"
	fi
	cp "$work/original" "$path"
}

only="${1:-}"
survived=0

# The reaper does nothing: a runner killed with -9 leaves its containers.
mutate reaper ephem-core/src/teardown/reaper.rs \
	'    let run_id = options.run_id.as_str();' \
	'    let run_id = options.run_id.as_str(); if !run_id.is_empty() { return Ok(exit_codes::OK); }' \
	cargo test -q -p cargo-ephem --test e2e reliability::kill_9_of_the_runner_leaves_nothing_10_times

# The sweep spares every run: abandoned runs stay until someone removes them.
mutate sweep ephem-fixtures/src/sweep/plan.rs \
	'        if let Some(reasons) = judge(&members) {' \
	'        if let Some(reasons) = judge(&members).filter(|_| false) {' \
	cargo test -q -p cargo-ephem --test e2e reliability::a_new_run_sweeps_abandoned_runs_first

# `down` trusts the pid of a state file without its start time.
mutate down ephem-core/src/dev.rs \
	'        Some(start) => local_process_state(state.pid, Some(start)),' \
	'        Some(_) => local_process_state(state.pid, None),' \
	cargo test -q -p cargo-ephem --test e2e dev_env::down_never_signals

# The dispatcher ignores a task that panicked: the run waits forever.
mutate panics ephem-core/src/run/dispatcher.rs \
	'            Ended::Panicked(task, message) => self.task_panicked(task, message),' \
	'            Ended::Panicked(_, _) => {}' \
	cargo test -q -p ephem-core --lib run::dispatcher::tests::a_panicking

# A provisioning result after a stop makes its shard ready again.
mutate race ephem-core/src/run/dispatcher.rs \
	'                if shard.phase != EnvPhase::Provisioning {' \
	'                if false {' \
	cargo test -q -p ephem-core --lib run::dispatcher::tests::a_provisioning_result_after_a_stop

exit "$survived"
