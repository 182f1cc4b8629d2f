#!/usr/bin/env bash
# VL-Adapter baseline vladapter_multiple_lora (parameter anchors of DESIGN.md §5).
# usage: bash scripts/vladapter_multiple_lora.sh NGPU [section.key=value ...]
exec bash "$(dirname "$0")/_launch.sh" vladapter_multiple_lora "$@"
