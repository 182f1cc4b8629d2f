#!/usr/bin/env bash
# PETAL on CLIP-BART, config petal_v2 (Table 4's ablation map; reference/petal_spec.md §5.4).
# usage: bash scripts/petal_v2.sh NGPU [section.key=value ...]
exec bash "$(dirname "$0")/_launch.sh" petal_v2 "$@"
