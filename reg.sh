#!/bin/sh
# The random event generator with the seed's options: -u/--uri (required), --total (100),
# --startTime (now - 1 day), --endTime (now), --concurrency (100), -h; plus --batch and --seed.
# Runs `collector gen` with the project's virtualenv when there is one, from any directory.
here="$(cd "$(dirname "$0")" && pwd)"
if [ -x "$here/.venv/bin/python" ]; then
    py="$here/.venv/bin/python"
else
    py="python3"
fi
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m collector gen "$@"
