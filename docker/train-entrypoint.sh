#!/bin/sh
# Entrypoint of the train image: `python -m training "$@"`, exec'd (it stays PID 1 and gets the signals).
# First, when a command that reads corpora meets an empty corpus folder (compose mounts an empty volume there
# unless DATA_DIR names a host folder), it says what to mount; the command still runs, since a config may read
# its corpus from elsewhere (a jsonl folder under /runs, say).
data=${CORPORA_DIR:-/shared/data}
case "${1:-}" in
    train|evaluate|lexicon|quality)
        if [ -z "$(ls -A "$data" 2>/dev/null)" ]; then
            cat >&2 <<MSG
note: no corpora in $data. The shipped configs read ../shared/data/<corpus> from /runs, that is
      $data/swda, $data/dailydialog, $data/chitchat. Mount the host folder that holds them with DATA_DIR:
        DATA_DIR=/path/to/data docker compose run --rm train $*
MSG
        fi
        ;;
esac
exec python -m training "$@"
