#!/usr/bin/env bash
# VL-Adapter baseline vladapter_multiple_prompts (VL-Adapter Table 1; parameter counts in the README).
# usage: bash scripts/vladapter_multiple_prompts.sh NGPU [section.key=value ...]
exec bash "$(dirname "$0")/_launch.sh" vladapter_multiple_prompts "$@"
