#!/usr/bin/env bash
# VL-Adapter baseline vladapter_single_compacter (VL-Adapter Table 1; parameter counts in the README).
# usage: bash scripts/vladapter_single_compacter.sh NGPU [section.key=value ...]
exec bash "$(dirname "$0")/_launch.sh" vladapter_single_compacter "$@"
