#!/usr/bin/env bash
# Paper Table 8 row comb2: multiple adapters with a per-task routing mix (CLIP-BART, four tasks).
# usage: bash scripts/multitask_adapter_comb2.sh NGPU [section.key=value ...]
exec bash "$(dirname "$0")/_launch.sh" multitask_adapter_comb2 "$@"
