#!/usr/bin/env bash
# Mutation testing of braver's orchestration code with mutmut 3 (pip install -e '.[mutation]').
#
#   bench/mutation.sh                       # the whole orchestration set, its fast tests
#   MUTATE="braver/train/stages.py braver/train/safety.py braver/train/callbacks.py" \
#   TESTS="tests/train" bench/mutation.sh   # a smaller set
#   MUTATE=braver/inference.py NAMES="braver.inference.x_predict_volume*" TESTS=... \
#   bench/mutation.sh                       # only the mutants of some functions (fnmatch)
#
# It works in a copy of the tree (WORK, default /tmp/braver-mutation), so the checkout gets no
# mutants/ folder and edits made meanwhile do not disturb the run; cli/ and recipes/ are moved
# into braver/ in the copy so that braver.cli and braver.recipes come from the copy too, and
# the CLI's decorated commands are rewritten as plain functions (bench/undecorate.py).
# mutmut runs, for each mutant, only the tests that executed the mutated function (-x, without
# the slow ones). Statements that only word a message (warnings.warn, BraverError, console
# lines) are not mutated. The last line is one JSON object: mutants, killed, survived, survival
# rate, seconds, load average; `mutmut results` / `mutmut show NAME` in WORK/tree list and show
# the survivors. CHILDREN: mutants tested at once (one per free core).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/braver-mutation}
CHILDREN=${CHILDREN:-2}
MUTATE=${MUTATE:-"braver/train/stages.py braver/train/safety.py braver/train/callbacks.py \
braver/train/runner.py braver/runs.py braver/inference.py braver/studies/*.py braver/cli/*.py"}
TESTS=${TESTS:-"tests/train/test_regularisation.py tests/train/test_safety.py \
tests/train/test_freezing.py tests/train/test_learner.py tests/train/test_runner.py \
tests/train/test_fastai_api.py tests/studies tests/cli tests/test_inference.py tests/test_runs.py"}
NAMES=${NAMES:-}  # fnmatch patterns of mutant names (module.x_function__mutmut_N); empty: all
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}

mkdir -p "$WORK"
# the tracked and the new (not ignored) files, as they are now
rm -rf "$WORK/tree.new" && mkdir -p "$WORK/tree.new"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - ) |
    tar -xf - -C "$WORK/tree.new"
for part in cli recipes; do  # braver.cli and braver.recipes live outside braver/ (package-dir)
    rm -rf "$WORK/tree.new/braver/$part" && mv "$WORK/tree.new/$part" "$WORK/tree.new/braver/$part"
done
# mutmut skips decorated functions, i.e. every Typer command: in the copy they become plain
# functions registered by a call after them (bench/undecorate.py), so their bodies are mutated
"$PYTHON" "$ROOT/bench/undecorate.py" "$WORK"/tree.new/braver/cli/*.py
# keep mutmut's cache (results of unchanged mutants) from an earlier run
if [ -d "$WORK/tree/mutants" ]; then mv "$WORK/tree/mutants" "$WORK/tree.new/mutants"; fi
rm -rf "$WORK/tree" && mv "$WORK/tree.new" "$WORK/tree"
cd "$WORK/tree"
toml_list() { printf '"%s", ' "$@" | sed 's/, $//'; }
existing_tests=()
for t in $TESTS; do [ -e "$t" ] && existing_tests+=("$t"); done
cat >> pyproject.toml <<TOML

[tool.mutmut]
source_paths = ["braver"]
only_mutate = [$(toml_list $MUTATE)]
pytest_add_cli_args_test_selection = [$(toml_list "${existing_tests[@]}")]
pytest_add_cli_args = ["-m", "not slow and not gpu", "-p", "no:cacheprovider", "-W", "ignore"]
# the words of messages (warnings, errors, console lines) are not wiring: not mutated; nor the
# layout of a rich table (justification, wrapping, header style: a line holding one of these
# keywords, e.g. table.add_column("params", justify="right", no_wrap=True), whole)
do_not_mutate_patterns = ['warnings\.warn\(', 'raise BraverError\(', '_say\(', 'console\.print\(', 'logger\.', '\b(title_justify|header_style|no_wrap|justify)=']
TOML
# fastest tests first (mutmut runs them with -x, from mutants/, where its stats file holds each
# test's duration): a mutant that a quick test kills does not wait for the slow ones first
cat >> tests/conftest.py <<'PY'


def pytest_collection_modifyitems(items):  # added by bench/mutation.sh, in its copy only
    import json
    from pathlib import Path

    stats = Path("mutmut-stats.json")
    if stats.exists():
        durations = json.loads(stats.read_text()).get("duration_by_test", {})
        items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))
PY
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 BRAVER_MUTATION=1
started=$(date +%s)
# shellcheck disable=SC2086  # NAMES: several patterns, split on purpose (no file globbing)
set -f
nice -n 5 "$PYTHON" -m mutmut run --max-children "$CHILDREN" $NAMES || true
set +f
"$PYTHON" -m mutmut results --all true > "$WORK/results.txt" 2>&1 || true
"$PYTHON" - "$WORK/results.txt" "$started" "$MUTATE" "$NAMES" <<'PY'
import collections, fnmatch, json, os, sys, time
counts = collections.Counter()
patterns = sys.argv[4].split()
for line in open(sys.argv[1]):
    if ":" in line and "__mutmut_" in line:
        name, status = (part.strip() for part in line.rsplit(":", 1))
        if not patterns or any(fnmatch.fnmatch(name, p) for p in patterns):
            counts[status] += 1
judged = counts["killed"] + counts["survived"] + counts["timeout"]
untested = judged + counts["no tests"]
print(json.dumps({
    "modules": sys.argv[3].split(), "mutants": sum(counts.values()), **counts,
    # survivors among the mutants some test executes; then counting untested ones as survivors
    "survival_rate": round(counts["survived"] / judged, 4) if judged else None,
    "survival_rate_untested_included": (
        round((counts["survived"] + counts["no tests"]) / untested, 4) if untested else None
    ),
    "seconds": round(time.time() - float(sys.argv[2])),
    "load_average_15min": round(os.getloadavg()[2], 1),
    **({"names": patterns} if patterns else {}),
}))
PY
