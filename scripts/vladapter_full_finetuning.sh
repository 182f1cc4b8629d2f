#!/usr/bin/env bash
# VL-Adapter baseline vladapter_full_finetuning (parameter anchors of DESIGN.md §5).
# usage: bash scripts/vladapter_full_finetuning.sh NGPU [section.key=value ...]
exec bash "$(dirname "$0")/_launch.sh" vladapter_full_finetuning "$@"
